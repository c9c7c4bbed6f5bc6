//! pylon-xds over real gRPC: a tonic client scripted against an in-process
//! server, checking the wire behaviour (ADS SotW and delta, the standalone
//! services, NACK bookkeeping, versions across restarts, stale nonces, live
//! edits written in several pieces) and the admin endpoint.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::{write_config, Sotw};
use control_plane::Running;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_client::ClusterDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::endpoint::v3::endpoint_discovery_service_client::EndpointDiscoveryServiceClient;
use envoy_types::pb::envoy::service::listener::v3::listener_discovery_service_client::ListenerDiscoveryServiceClient;
use envoy_types::pb::envoy::service::route::v3::route_discovery_service_client::RouteDiscoveryServiceClient;
use envoy_types::pb::google::rpc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::Streaming;

const CLUSTER: &str = pylon::type_url::CLUSTER;
const ENDPOINT: &str = pylon::type_url::ENDPOINT;
const LISTENER: &str = pylon::type_url::LISTENER;
const ROUTE: &str = pylon::type_url::ROUTE;

const CONFIG: &str = "clusters:
  - name: a
    endpoints: [127.0.0.1:7001]
  - name: b
    endpoints: [127.0.0.1:7002, 127.0.0.1:7003]
listeners:
  - name: front
    address: 127.0.0.1:8000
    http:
      routes:
        - { prefix: /a, cluster: a }
        - { prefix: /, cluster: b }
";

async fn start(path: &Path) -> Running {
    common::start(path, Duration::from_millis(200)).await
}

fn node(id: &str) -> Node {
    Node {
        id: id.into(),
        cluster: "test".into(),
        ..Default::default()
    }
}

fn sotw_req(type_url: &str, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: type_url.into(),
        resource_names: names.iter().map(|s| s.to_string()).collect(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        node: Some(node("grpc-test")),
        ..Default::default()
    }
}

async fn admin_get(running: &Running, path: &str) -> String {
    let (code, body) = control_plane::admin::get(running.admin_addr.unwrap(), path)
        .await
        .unwrap();
    assert_eq!(code, 200, "{path}: {body}");
    body
}

#[tokio::test]
async fn ads_sotw_push_nack_and_stale_nonce() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), CONFIG);
    let running = start(&path).await;
    let mut s = Sotw::ads(running.xds_addr).await;

    s.send(sotw_req(CLUSTER, &[], "", "")).await;
    let cds = s.recv().await;
    assert_eq!(cds.type_url, CLUSTER);
    assert_eq!(common::cluster_names(&cds), ["a", "b"]);
    s.send(sotw_req(CLUSTER, &[], &cds.version_info, &cds.nonce))
        .await;
    s.send(sotw_req(ENDPOINT, &["a", "b"], "", "")).await;
    let eds = s.recv().await;
    assert_eq!(eds.resources.len(), 2);
    s.send(sotw_req(
        ENDPOINT,
        &["a", "b"],
        &eds.version_info,
        &eds.nonce,
    ))
    .await;
    s.send(sotw_req(LISTENER, &[], "", "")).await;
    let lds = s.recv().await;
    assert_eq!(lds.resources.len(), 1);
    s.send(sotw_req(LISTENER, &[], &lds.version_info, &lds.nonce))
        .await;
    // After LDS, the next RDS request is answered (warming).
    s.send(sotw_req(ROUTE, &["front"], "", "")).await;
    let rds = s.recv().await;
    assert_eq!(rds.type_url, ROUTE);
    s.send(sotw_req(ROUTE, &["front"], &rds.version_info, &rds.nonce))
        .await;
    s.quiet(Duration::from_millis(300)).await;

    // A live edit (cluster a's timeout): CDS is pushed, then (warming) EDS when asked again.
    write_config(
        dir.path(),
        &CONFIG.replacen("  - name: a\n", "  - name: a\n    connect_timeout: 2s\n", 1),
    );
    let cds2 = s.recv().await;
    assert_eq!(cds2.type_url, CLUSTER);
    assert_ne!(cds2.version_info, cds.version_info);

    // NACK it: recorded, visible, never resent.
    let mut nack = sotw_req(CLUSTER, &[], &cds.version_info, &cds2.nonce);
    nack.error_detail = Some(rpc::Status {
        code: 3,
        message: "cluster a: not today".into(),
        details: vec![],
    });
    s.send(nack).await;
    // A stale nonce (the first CDS response's) must not cause a push either.
    s.send(sotw_req(CLUSTER, &[], &cds.version_info, &cds.nonce))
        .await;
    s.quiet(Duration::from_millis(500)).await;
    let nodes: serde_json::Value =
        serde_json::from_str(&admin_get(&running, "/nodes").await).unwrap();
    let cds_status = &nodes[0]["types"]["cds"];
    assert_eq!(nodes[0]["node"], "grpc-test");
    assert_eq!(cds_status["state"], "ERROR");
    assert_eq!(cds_status["last_nack"]["message"], "cluster a: not today");
    assert_eq!(
        cds_status["last_nack"]["version"],
        cds2.version_info.as_str()
    );
    let metrics = admin_get(&running, "/metrics").await;
    assert!(
        metrics.contains("pylon_xds_nacks_total{type=\"cds\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pylon_xds_stale_nonces_total{type=\"cds\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pylon_xds_connected_streams 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pylon_xds_push_latency_seconds_bucket"),
        "{metrics}"
    );

    // The next good edit is sent normally.
    write_config(
        dir.path(),
        &CONFIG.replacen("  - name: a\n", "  - name: a\n    connect_timeout: 3s\n", 1),
    );
    let cds3 = s.recv().await;
    assert_eq!(cds3.type_url, CLUSTER);
    assert_ne!(cds3.version_info, cds2.version_info);
    running.shutdown().await;
}

#[tokio::test]
async fn names_requested_before_they_exist_arrive_when_added() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), CONFIG);
    let running = start(&path).await;
    let mut s = Sotw::ads(running.xds_addr).await;
    s.send(sotw_req(ENDPOINT, &["a", "later"], "", "")).await;
    let first = s.recv().await;
    assert_eq!(first.resources.len(), 1);
    s.send(sotw_req(
        ENDPOINT,
        &["a", "later"],
        &first.version_info,
        &first.nonce,
    ))
    .await;
    s.quiet(Duration::from_millis(300)).await;
    write_config(
        dir.path(),
        &format!("{CONFIG}  - name: extra\n    address: 127.0.0.1:8001\n    tcp_proxy: {{ cluster: later }}\n")
            .replace("clusters:\n", "clusters:\n  - name: later\n    endpoints: [127.0.0.1:7009]\n"),
    );
    let pushed = s.recv().await;
    assert_eq!(pushed.type_url, ENDPOINT);
    // The new load assignment alone: the client keeps `a`, which did not
    // change (SotW EDS responses need not carry every name).
    let names: Vec<String> = pushed
        .resources
        .iter()
        .map(|a| {
            <envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment as prost::Message>::decode(
                a.value.as_slice(),
            )
            .unwrap()
            .cluster_name
        })
        .collect();
    assert_eq!(names, ["later"]);
    running.shutdown().await;
}

#[tokio::test]
async fn standalone_services_serve_their_type() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), CONFIG);
    let running = start(&path).await;
    let url = format!("http://{}", running.xds_addr);

    async fn first<F, Fut>(open: F, req: DiscoveryRequest) -> DiscoveryResponse
    where
        F: FnOnce(ReceiverStream<DiscoveryRequest>) -> Fut,
        Fut: std::future::Future<
            Output = Result<tonic::Response<Streaming<DiscoveryResponse>>, tonic::Status>,
        >,
    {
        let (tx, rx) = mpsc::channel(4);
        tx.send(req).await.unwrap();
        let mut stream = open(ReceiverStream::new(rx)).await.unwrap().into_inner();
        let r = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        drop(tx);
        r
    }

    let mut cds = ClusterDiscoveryServiceClient::connect(url.clone())
        .await
        .unwrap();
    let r = first(|s| cds.stream_clusters(s), sotw_req(CLUSTER, &[], "", "")).await;
    assert_eq!(common::cluster_names(&r), ["a", "b"]);
    let mut eds = EndpointDiscoveryServiceClient::connect(url.clone())
        .await
        .unwrap();
    let r = first(
        |s| eds.stream_endpoints(s),
        sotw_req(ENDPOINT, &["b"], "", ""),
    )
    .await;
    assert_eq!((r.type_url.as_str(), r.resources.len()), (ENDPOINT, 1));
    let mut lds = ListenerDiscoveryServiceClient::connect(url.clone())
        .await
        .unwrap();
    let r = first(|s| lds.stream_listeners(s), sotw_req(LISTENER, &[], "", "")).await;
    assert_eq!((r.type_url.as_str(), r.resources.len()), (LISTENER, 1));
    let mut rds = RouteDiscoveryServiceClient::connect(url.clone())
        .await
        .unwrap();
    let r = first(
        |s| rds.stream_routes(s),
        sotw_req(ROUTE, &["front"], "", ""),
    )
    .await;
    assert_eq!((r.type_url.as_str(), r.resources.len()), (ROUTE, 1));
    // The wrong type on a single-type service is an error.
    let (tx, rx) = mpsc::channel(4);
    tx.send(sotw_req(LISTENER, &[], "", "")).await.unwrap();
    let mut stream = cds
        .stream_clusters(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let err = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // Unary fetch.
    let r = cds
        .fetch_clusters(sotw_req(CLUSTER, &["b"], "", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(common::cluster_names(&r), ["b"]);
    // ADS has only its two streaming methods: any other path answers
    // UNIMPLEMENTED, as a generated server does for a method it lacks.
    let channel = tonic::transport::Channel::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let err = grpc
        .unary::<DiscoveryRequest, DiscoveryResponse, _>(
            tonic::Request::new(sotw_req(CLUSTER, &[], "", "")),
            tonic::codegen::http::uri::PathAndQuery::from_static(
                "/envoy.service.discovery.v3.AggregatedDiscoveryService/FetchAggregatedResources",
            ),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");
    running.shutdown().await;
}

#[tokio::test]
async fn versions_survive_restarts_and_delta_resumes_without_resending() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), CONFIG);

    async fn delta_first(
        addr: SocketAddr,
        initial: Vec<(String, String)>,
    ) -> DeltaDiscoveryResponse {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(4);
        tx.send(DeltaDiscoveryRequest {
            node: Some(node("delta-test")),
            type_url: CLUSTER.into(),
            initial_resource_versions: initial.into_iter().collect(),
            ..Default::default()
        })
        .await
        .unwrap();
        let mut stream = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let r = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        drop(tx);
        r
    }

    let running = start(&path).await;
    let first = delta_first(running.xds_addr, vec![]).await;
    assert_eq!(first.resources.len(), 2);
    let held: Vec<(String, String)> = first
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    let version = running.source_status().version;
    running.shutdown().await;

    // Same YAML, new process state: same versions, and a resuming client holding
    // them is sent nothing but the (answered) wildcard response.
    let running = start(&path).await;
    assert_eq!(running.source_status().version, version);
    let resumed = delta_first(running.xds_addr, held.clone()).await;
    assert!(
        resumed.resources.is_empty(),
        "identical versions were resent"
    );
    assert_eq!(resumed.system_version_info, first.system_version_info);
    // A client holding a different version of `a` gets `a` only.
    let mut stale = held.clone();
    stale[0].1 = "old".into();
    let r = delta_first(running.xds_addr, stale).await;
    assert_eq!(
        r.resources
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        ["a"]
    );
    running.shutdown().await;
}

#[tokio::test]
async fn a_file_written_in_several_pieces_is_served_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), CONFIG);
    let running = start(&path).await;
    let v0 = running.source_status().version;
    let mut s = Sotw::ads(running.xds_addr).await;
    s.send(sotw_req(CLUSTER, &[], "", "")).await;
    let cds = s.recv().await;
    s.send(sotw_req(CLUSTER, &[], &cds.version_info, &cds.nonce))
        .await;

    // Truncate, then write the new file in three pieces with pauses shorter
    // than the debounce. The first piece alone is valid YAML (one cluster
    // fewer): it must never be served.
    let new = CONFIG.replace(
        "clusters:\n",
        "clusters:\n  - name: c\n    endpoints: [127.0.0.1:7004]\n",
    );
    let (p1, rest) = new.split_at(new.find("  - name: b").unwrap());
    let (p2, p3) = rest.split_at(rest.len() / 2);
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        for piece in [p1, p2, p3] {
            f.write_all(piece.as_bytes()).unwrap();
            f.flush().unwrap();
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }
    let pushed = s.recv().await;
    assert_eq!(common::cluster_names(&pushed), ["a", "b", "c"]);
    s.send(sotw_req(CLUSTER, &[], &pushed.version_info, &pushed.nonce))
        .await;
    s.quiet(Duration::from_millis(500)).await;
    let status = running.status();
    assert!(
        status.source.last_reload_error.is_none(),
        "{:?}",
        status.source.last_reload_error
    );
    assert_ne!(status.source.version, v0);
    let metrics = admin_get(&running, "/metrics").await;
    assert!(metrics.contains("pylon_xds_reloads_total 1"), "{metrics}");
    assert!(
        metrics.contains("pylon_xds_reload_errors_total 0"),
        "{metrics}"
    );
    running.shutdown().await;
}
