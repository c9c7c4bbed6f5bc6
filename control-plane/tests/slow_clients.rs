//! Clients that stop reading: what pylon-xds keeps for them and what they
//! are sent when they read again, while the others are served as usual.
//!
//! A stuck client (an Envoy paused in a debugger, a proxy whose host is
//! swapping) stops reading its stream; HTTP/2 flow control then stops the
//! server from sending more than the client's window. pylon-xds makes a
//! stream's next response only when the stream may send, so nothing queues
//! up for it: when it reads again it is sent what changed since what it
//! holds, once, from the latest snapshot, not every version in between.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{start, write_config, Sotw, RESPONSE_DEADLINE};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest,
};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::Endpoint;
use tonic::Streaming;

const ENDPOINT: &str = pylon::type_url::ENDPOINT;

/// Edits made while the stuck clients do not read.
const EDITS: u16 = 30;

/// The stream window the stuck clients give the server: room for one or two
/// pushes of one load assignment.
const WINDOW: u32 = 256;

/// Ten clusters; `generation` moves c-0's endpoint to port 20000 + it.
fn config(generation: u16) -> String {
    let mut s = String::from("clusters:\n");
    for i in 0..10u16 {
        let port = if i == 0 {
            20000 + generation
        } else {
            30000 + i
        };
        s.push_str(&format!(
            "  - name: c-{i}\n    endpoints: [127.0.0.1:{port}]\n"
        ));
    }
    s
}

fn names() -> Vec<String> {
    (0..10).map(|i| format!("c-{i}")).collect()
}

/// The port of c-0's endpoint in an encoded load assignment, if it is c-0.
fn c0_port(bytes: &[u8]) -> Option<u32> {
    let cla = ClusterLoadAssignment::decode(bytes).unwrap();
    if cla.cluster_name != "c-0" {
        return None;
    }
    let ep = cla.endpoints[0].lb_endpoints[0].host_identifier.clone()?;
    use envoy_types::pb::envoy::config::core::v3::address::Address;
    use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
    use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    let HostIdentifier::Endpoint(e) = ep else {
        return None;
    };
    match e.address?.address? {
        Address::SocketAddress(sa) => match sa.port_specifier? {
            PortSpecifier::PortValue(p) => Some(p),
            _ => None,
        },
        _ => None,
    }
}

/// A delta ADS stream subscribed to every load assignment, on a connection
/// of its own with a stream window of [`WINDOW`] bytes.
struct StuckDelta {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
}

impl StuckDelta {
    async fn open(addr: std::net::SocketAddr) -> StuckDelta {
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .initial_stream_window_size(WINDOW)
            .connect()
            .await
            .unwrap();
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        let (tx, rx) = mpsc::channel(16);
        tx.send(DeltaDiscoveryRequest {
            node: Some(envoy_types::pb::envoy::config::core::v3::Node {
                id: "stuck-delta".into(),
                ..Default::default()
            }),
            type_url: ENDPOINT.into(),
            resource_names_subscribe: names(),
            ..Default::default()
        })
        .await
        .unwrap();
        let rx = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let mut s = StuckDelta { tx, rx };
        let first = s.recv().await;
        assert_eq!(first.resources.len(), 10);
        s
    }

    /// The next response, ACKed.
    async fn recv(&mut self) -> DeltaDiscoveryResponse {
        let r = tokio::time::timeout(RESPONSE_DEADLINE, self.rx.next())
            .await
            .expect("a response within the deadline")
            .unwrap()
            .unwrap();
        self.tx
            .send(DeltaDiscoveryRequest {
                type_url: r.type_url.clone(),
                response_nonce: r.nonce.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        r
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_gets_the_latest_version_and_delays_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &config(0));
    let running = start(&path, Duration::from_millis(10)).await;
    let addr = running.xds_addr;

    // A SotW client that stops reading, on its own connection too.
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .initial_stream_window_size(WINDOW)
        .connect()
        .await
        .unwrap();
    let (stuck_tx, rx) = mpsc::channel(16);
    let mut stuck_sotw = AggregatedDiscoveryServiceClient::new(channel)
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let sotw_req = |version: &str, nonce: &str| DiscoveryRequest {
        node: Some(envoy_types::pb::envoy::config::core::v3::Node {
            id: "stuck-sotw".into(),
            ..Default::default()
        }),
        type_url: ENDPOINT.into(),
        resource_names: names(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    };
    stuck_tx.send(sotw_req("", "")).await.unwrap();
    let first = stuck_sotw.next().await.unwrap().unwrap();
    assert_eq!(first.resources.len(), 10);
    stuck_tx
        .send(sotw_req(&first.version_info, &first.nonce))
        .await
        .unwrap();
    let mut stuck_delta = StuckDelta::open(addr).await;

    // A client that reads: it gets every edit while the others do not read.
    let mut live = Sotw::ads(addr).await;
    live.send(DiscoveryRequest {
        type_url: ENDPOINT.into(),
        resource_names: names(),
        ..Default::default()
    })
    .await;
    let mut last = live.recv().await;
    assert_eq!(last.resources.len(), 10);
    for generation in 1..=EDITS {
        live.send(DiscoveryRequest {
            type_url: ENDPOINT.into(),
            resource_names: names(),
            version_info: last.version_info.clone(),
            response_nonce: last.nonce.clone(),
            ..Default::default()
        })
        .await;
        write_config(dir.path(), &config(generation));
        let pushed = live.recv().await;
        assert_eq!(pushed.type_url, ENDPOINT);
        // Only c-0 changed: the push carries it alone, at this generation.
        assert_eq!(pushed.resources.len(), 1, "{pushed:?}");
        assert_eq!(
            c0_port(&pushed.resources[0].value),
            Some(20000 + u32::from(generation))
        );
        last = pushed;
    }
    let latest = Some(20000 + u32::from(EDITS));

    // The stuck clients read again: a few responses their window held, then
    // the latest version, and nothing in between.
    let mut sotw_seen = Vec::new();
    loop {
        let r = tokio::time::timeout(RESPONSE_DEADLINE, stuck_sotw.next())
            .await
            .expect("a response within the deadline")
            .unwrap()
            .unwrap();
        stuck_tx
            .send(sotw_req(&r.version_info, &r.nonce))
            .await
            .unwrap();
        let port = r.resources.iter().find_map(|a| c0_port(&a.value));
        sotw_seen.push(port);
        if port == latest {
            break;
        }
    }
    let mut delta_seen = Vec::new();
    loop {
        let r = stuck_delta.recv().await;
        let port = r
            .resources
            .iter()
            .find_map(|res| c0_port(&res.resource.as_ref().unwrap().value));
        delta_seen.push(port);
        if port == latest {
            break;
        }
    }
    eprintln!("after {EDITS} edits, the stuck SotW client read {sotw_seen:?}, the delta one {delta_seen:?}");
    for seen in [&sotw_seen, &delta_seen] {
        assert!(
            seen.len() <= 4,
            "a client that stopped reading was sent the versions in between: {seen:?}"
        );
    }
    // Caught up: nothing more is pending for them.
    let quiet = tokio::time::timeout(Duration::from_millis(300), stuck_sotw.next()).await;
    assert!(quiet.is_err(), "{quiet:?}");
    let quiet = tokio::time::timeout(Duration::from_millis(300), stuck_delta.rx.next()).await;
    assert!(quiet.is_err(), "{quiet:?}");
    running.shutdown().await;
}
