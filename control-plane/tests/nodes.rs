//! Per-node selection and CSDS over real gRPC: scripted tonic clients with
//! different node ids against an in-process pylon-xds.
//!
//! Checks that each node receives exactly its selection (listeners bring
//! their routes and clusters), that every selection is served from the same
//! revision with the same versions, that `/nodes` names the selection, and
//! that CSDS reports SYNCED, STALE, NOT_SENT and ERROR (with the NACK message)
//! per resource and honours node matchers.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::write_config;
use control_plane::Running;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    string_matcher::MatchPattern, NodeMatcher, StringMatcher,
};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::envoy::service::status::v3::client_status_discovery_service_client::ClientStatusDiscoveryServiceClient;
use envoy_types::pb::envoy::service::status::v3::{
    ClientConfig, ClientStatusRequest, ConfigStatus,
};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use envoy_types::pb::google::rpc;
use prost::Message;

const CLUSTER: &str = pylon::type_url::CLUSTER;
const LISTENER: &str = pylon::type_url::LISTENER;
const ROUTE: &str = pylon::type_url::ROUTE;

const CONFIG: &str = "clusters:
  - name: web
    endpoints: [127.0.0.1:7001]
  - name: spare
    endpoints: [127.0.0.1:7002]
listeners:
  - name: front
    address: 127.0.0.1:8000
    http:
      routes: [{prefix: /, cluster: web}]
grpc_services:
  - name: greeter.example
    port: 50051
    endpoints: [127.0.0.1:50061, 127.0.0.1:50062]
nodes:
  - name: proxyless
    match: {id: \"grpc-*\", metadata: {lang: python}}
    listeners: [\"greeter.example:50051\"]
  - name: edge
    match: {cluster: edge}
    listeners: [front]
";

async fn start(dir: &Path, text: &str) -> (Running, PathBuf) {
    let path = write_config(dir, text);
    let running = common::start(&path, Duration::from_millis(100)).await;
    (running, path)
}

fn node(id: &str, cluster: &str, lang: Option<&str>) -> Node {
    Node {
        id: id.into(),
        cluster: cluster.into(),
        metadata: lang.map(|l| Struct {
            fields: [(
                "lang".to_string(),
                Value {
                    kind: Some(Kind::StringValue(l.into())),
                },
            )]
            .into(),
        }),
        ..Default::default()
    }
}

/// A scripted ADS client presenting one node.
struct Sotw {
    stream: common::Sotw,
    node: Node,
}

impl Sotw {
    async fn ads(addr: SocketAddr, node: Node) -> Self {
        Sotw {
            stream: common::Sotw::ads(addr).await,
            node,
        }
    }

    async fn send(&self, type_url: &str, names: &[&str], ack: Option<&DiscoveryResponse>) {
        self.send_full(type_url, names, ack, None).await;
    }

    async fn send_full(
        &self,
        type_url: &str,
        names: &[&str],
        ack: Option<&DiscoveryResponse>,
        nack: Option<&str>,
    ) {
        let req = DiscoveryRequest {
            type_url: type_url.into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            version_info: ack
                .filter(|_| nack.is_none())
                .map(|r| r.version_info.clone())
                .unwrap_or_default(),
            response_nonce: ack.map(|r| r.nonce.clone()).unwrap_or_default(),
            node: Some(self.node.clone()),
            error_detail: nack.map(|m| rpc::Status {
                code: 3,
                message: m.into(),
                details: Vec::new(),
            }),
            ..Default::default()
        };
        self.stream.send(req).await;
    }

    async fn recv(&mut self) -> DiscoveryResponse {
        self.stream.recv().await
    }
}

fn names(r: &DiscoveryResponse) -> Vec<String> {
    r.resources
        .iter()
        .map(|a| match a.type_url.as_str() {
            CLUSTER => Cluster::decode(a.value.as_slice()).unwrap().name,
            LISTENER => Listener::decode(a.value.as_slice()).unwrap().name,
            ROUTE => {
                envoy_types::pb::envoy::config::route::v3::RouteConfiguration::decode(
                    a.value.as_slice(),
                )
                .unwrap()
                .name
            }
            other => panic!("unexpected {other}"),
        })
        .collect()
}

async fn csds(running: &Running, matchers: Vec<NodeMatcher>) -> Vec<ClientConfig> {
    let mut client =
        ClientStatusDiscoveryServiceClient::connect(format!("http://{}", running.xds_addr))
            .await
            .unwrap();
    client
        .fetch_client_status(ClientStatusRequest {
            node_matchers: matchers,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .config
}

/// (type short name, resource name, status) of every resource CSDS lists.
fn statuses(c: &ClientConfig) -> Vec<(String, String, &'static str)> {
    let mut v: Vec<_> = c
        .generic_xds_configs
        .iter()
        .map(|g| {
            (
                g.type_url.rsplit('.').next().unwrap().to_string(),
                g.name.clone(),
                ConfigStatus::try_from(g.config_status)
                    .unwrap()
                    .as_str_name(),
            )
        })
        .collect();
    v.sort();
    v
}

fn id_is(id: &str) -> NodeMatcher {
    NodeMatcher {
        node_id: Some(StringMatcher {
            ignore_case: false,
            match_pattern: Some(MatchPattern::Exact(id.into())),
        }),
        node_metadatas: Vec::new(),
    }
}

async fn eventually_csds<F: Fn(&[ClientConfig]) -> bool>(
    running: &Running,
    matchers: Vec<NodeMatcher>,
    what: &str,
    ok: F,
) -> Vec<ClientConfig> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = csds(running, matchers.clone()).await;
        if ok(&got) {
            return got;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("{what}: CSDS never showed it; last answer: {got:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn each_node_gets_its_selection_from_one_revision() {
    let dir = tempfile::tempdir().unwrap();
    let (running, _) = start(dir.path(), CONFIG).await;

    // Edge: a wildcard client sees its listener, and the cluster the
    // listener's routes use; not `spare`, not the gRPC service.
    let mut edge = Sotw::ads(running.xds_addr, node("envoy-1", "edge", None)).await;
    edge.send(CLUSTER, &[], None).await;
    let cds_edge = edge.recv().await;
    assert_eq!(names(&cds_edge), ["web"]);
    edge.send(LISTENER, &[], None).await;
    let lds_edge = edge.recv().await;
    assert_eq!(names(&lds_edge), ["front"]);

    // Proxyless: it names its listener; the cluster comes with it.
    let mut grpc = Sotw::ads(running.xds_addr, node("grpc-client-1", "c", Some("python"))).await;
    grpc.send(LISTENER, &["greeter.example:50051", "front"], None)
        .await;
    let lds_grpc = grpc.recv().await;
    // `front` is outside its selection: not sent.
    assert_eq!(names(&lds_grpc), ["greeter.example:50051"]);
    grpc.send(CLUSTER, &["greeter.example:50051", "web"], None)
        .await;
    let cds_grpc = grpc.recv().await;
    assert_eq!(names(&cds_grpc), ["greeter.example:50051"]);

    // One revision, one version per type, whatever the selection.
    assert_eq!(cds_edge.version_info, cds_grpc.version_info);
    assert_eq!(lds_edge.version_info, lds_grpc.version_info);

    // A node matching no entry gets the documented default: everything.
    let mut other = Sotw::ads(running.xds_addr, node("grpc-client-2", "c", Some("go"))).await;
    other.send(CLUSTER, &[], None).await;
    let mut all = names(&other.recv().await);
    all.sort();
    assert_eq!(all, ["greeter.example:50051", "spare", "web"]);

    // /nodes names the selection each stream matched.
    let (_, body) = control_plane::admin::get(running.admin_addr.unwrap(), "/nodes")
        .await
        .unwrap();
    let nodes: serde_json::Value = serde_json::from_str(&body).unwrap();
    let selection_of = |id: &str| {
        nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == id)
            .map(|n| n["selection"].as_str().unwrap().to_string())
    };
    assert_eq!(selection_of("envoy-1").as_deref(), Some("edge"));
    assert_eq!(selection_of("grpc-client-1").as_deref(), Some("proxyless"));
    assert_eq!(selection_of("grpc-client-2").as_deref(), Some("default"));

    // CSDS: before any ACK, sent resources are STALE and the name outside the
    // selection is NOT_SENT.
    let got = csds(&running, vec![id_is("grpc-client-1")]).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].node.as_ref().unwrap().id, "grpc-client-1");
    assert_eq!(
        statuses(&got[0]),
        [
            ("Cluster".into(), "greeter.example:50051".into(), "STALE"),
            ("Cluster".into(), "web".into(), "NOT_SENT"),
            ("Listener".into(), "front".into(), "NOT_SENT"),
            ("Listener".into(), "greeter.example:50051".into(), "STALE"),
        ]
    );
    // The resource itself is included, as the client was sent it.
    let listener = got[0]
        .generic_xds_configs
        .iter()
        .find(|g| g.name == "greeter.example:50051" && g.type_url == LISTENER)
        .unwrap();
    assert_eq!(listener.version_info.len(), 16);
    assert_eq!(
        Listener::decode(listener.xds_config.as_ref().unwrap().value.as_slice())
            .unwrap()
            .name,
        "greeter.example:50051"
    );

    // ACK the clusters, NACK the listener: SYNCED and ERROR with the message.
    grpc.send(CLUSTER, &["greeter.example:50051", "web"], Some(&cds_grpc))
        .await;
    grpc.send_full(
        LISTENER,
        &["greeter.example:50051", "front"],
        Some(&lds_grpc),
        Some("no route for you"),
    )
    .await;
    let got = eventually_csds(&running, vec![id_is("grpc-client-1")], "ack+nack", |c| {
        c.len() == 1
            && statuses(&c[0]).contains(&(
                "Listener".into(),
                "greeter.example:50051".into(),
                "ERROR",
            ))
            && statuses(&c[0]).contains(&(
                "Cluster".into(),
                "greeter.example:50051".into(),
                "SYNCED",
            ))
    })
    .await;
    let failed = got[0]
        .generic_xds_configs
        .iter()
        .find(|g| g.config_status == ConfigStatus::Error as i32)
        .unwrap();
    let error = failed.error_state.as_ref().unwrap();
    assert_eq!(error.details, "no route for you");
    assert_eq!(error.version_info, lds_grpc.version_info);

    // No matcher: every node, one ClientConfig each.
    let all = csds(&running, Vec::new()).await;
    let mut ids: Vec<String> = all.iter().map(|c| c.node.clone().unwrap().id).collect();
    ids.sort();
    assert_eq!(ids, ["envoy-1", "grpc-client-1", "grpc-client-2"]);
    running.shutdown().await;
}

#[tokio::test]
async fn a_selection_edit_moves_a_node_without_a_new_content_version() {
    let dir = tempfile::tempdir().unwrap();
    let (running, path) = start(dir.path(), CONFIG).await;
    let mut edge = Sotw::ads(running.xds_addr, node("envoy-1", "edge", None)).await;
    edge.send(CLUSTER, &[], None).await;
    let first = edge.recv().await;
    assert_eq!(names(&first), ["web"]);
    edge.send(CLUSTER, &[], Some(&first)).await;

    // The edge selection now also names `spare`: the node gets it, and the
    // cluster version is the same (no cluster changed), though the revision
    // is new.
    let before = running.source_status().version;
    let text = CONFIG.replace(
        "    listeners: [front]\n",
        "    listeners: [front]\n    clusters: [spare]\n",
    );
    write_config(path.parent().unwrap(), &text);
    let second = edge.recv().await;
    let mut got = names(&second);
    got.sort();
    assert_eq!(got, ["spare", "web"]);
    assert_eq!(second.version_info, first.version_info);
    // The status records the revision just after publishing it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while running.source_status().version == before {
        assert!(tokio::time::Instant::now() < deadline, "revision unchanged");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    running.shutdown().await;
}

#[tokio::test]
async fn unsupported_matchers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (running, _) = start(dir.path(), CONFIG).await;
    let mut client =
        ClientStatusDiscoveryServiceClient::connect(format!("http://{}", running.xds_addr))
            .await
            .unwrap();
    let err = client
        .fetch_client_status(ClientStatusRequest {
            node_matchers: vec![NodeMatcher {
                node_id: Some(StringMatcher {
                    ignore_case: false,
                    match_pattern: None,
                }),
                node_metadatas: Vec::new(),
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    running.shutdown().await;
}
