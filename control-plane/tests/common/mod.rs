//! Helpers shared by the gRPC-level tests (`grpc.rs`, `nodes.rs`, `hostile.rs`): writing a
//! config file the way editors do, serving it in-process, and a scripted
//! state-of-the-world ADS client with deadlines.

// Each test file uses its own subset.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use control_plane::{serve, Running, ServeOptions};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::Streaming;

/// How long a scripted client waits for a response.
pub const RESPONSE_DEADLINE: Duration = Duration::from_secs(10);

/// Serves `path` in-process: xDS and admin on 127.0.0.1:0.
pub async fn start(path: &Path, debounce: Duration) -> Running {
    serve(ServeOptions {
        config: path.to_path_buf(),
        xds_listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        debounce,
        limits: Default::default(),
        state_dir: None,
        max_streams: control_plane::server::limits::DEFAULT_MAX_STREAMS,
        dns_server: None,
    })
    .await
    .unwrap()
}

/// Writes `dir/pylon.yaml` as editors do: a sibling file renamed over it.
pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("pylon.yaml");
    let tmp = dir.join(".pylon.yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

/// The names of the clusters a response carries.
pub fn cluster_names(r: &DiscoveryResponse) -> Vec<String> {
    r.resources
        .iter()
        .map(|a| Cluster::decode(a.value.as_slice()).unwrap().name)
        .collect()
}

/// A scripted SotW ADS stream: send requests, read responses with a deadline.
pub struct Sotw {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

impl Sotw {
    /// Opens an ADS stream to `addr`.
    pub async fn ads(addr: std::net::SocketAddr) -> Self {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(16);
        let rx = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Sotw { tx, rx }
    }

    pub async fn send(&self, r: DiscoveryRequest) {
        self.tx.send(r).await.unwrap();
    }

    /// The next response; panics after [`RESPONSE_DEADLINE`].
    pub async fn recv(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(RESPONSE_DEADLINE, self.rx.next())
            .await
            .expect("a response within the deadline")
            .unwrap()
            .unwrap()
    }

    /// Asserts that nothing arrives for `d`.
    pub async fn quiet(&mut self, d: Duration) {
        if let Ok(Some(r)) = tokio::time::timeout(d, self.rx.next()).await {
            panic!(
                "unexpected response: {:?}",
                r.map(|r| (r.type_url, r.version_info))
            );
        }
    }
}
