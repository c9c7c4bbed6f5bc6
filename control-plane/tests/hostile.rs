//! Bad input from the network: a scripted gRPC client sends malformed and
//! hostile requests to the real `pylon-xds serve` binary (a child process, so
//! the memory and task figures are the server's alone). Each case checks the
//! gRPC status the protocol calls for, that the process stays up, and that a
//! well-behaved ADS client connected before the abuse still receives a live
//! edit of the YAML afterwards, as does a client connecting afterwards. The
//! server is also run with a low descriptor limit and more connections than
//! it can accept, to check that it waits that out without spinning.
//!
//! Arbitrary bytes go on the wire through [`RawCodec`], a tonic codec for
//! `Vec<u8>` messages: tonic frames them, nothing checks them.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::future::Future;
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_client::ClusterDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc;
use hyper_util::rt::TokioIo;
use prost::bytes::{Buf, BufMut};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::codegen::http::Uri;
use tonic::codegen::Service;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};

/// Taken by every test here for its whole run: the tests saturate both cores
/// and measure the server's memory, so they must not overlap each other
/// (nextest also runs this binary's tests alone, see `.config/nextest.toml`;
/// under `cargo test`, which runs one test binary at a time, this lock keeps
/// the tests of this binary from overlapping).
async fn alone() -> tokio::sync::MutexGuard<'static, ()> {
    static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    ALONE.lock().await
}

const BIN: &str = env!("CARGO_BIN_EXE_pylon-xds");
const CLUSTER: &str = pylon::type_url::CLUSTER;
const ENDPOINT: &str = pylon::type_url::ENDPOINT;
const ADS_SOTW: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const ADS_DELTA: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
/// The server's per-stream, per-type cap on subscribed names
/// (`server::sotw::MAX_NAMES_PER_TYPE`).
const MAX_NAMES: usize = control_plane::server::sotw::MAX_NAMES_PER_TYPE;
/// How long any single expected event may take.
const DEADLINE: Duration = Duration::from_secs(15);

/// The served config; each edit adds a cluster `gen-N`, which the listener's
/// routes do not use.
fn config(generation: u32) -> String {
    format!(
        "clusters:
  - name: a
    endpoints: [127.0.0.1:7001]
  - name: b
    endpoints: [127.0.0.1:7002, 127.0.0.1:7003]
  - name: gen-{generation}
    endpoints: [127.0.0.1:7004]
listeners:
  - name: front
    address: 127.0.0.1:8000
    http:
      routes:
        - {{ prefix: /a, cluster: a }}
        - {{ prefix: /, cluster: b }}
"
    )
}

fn node(id: &str) -> Node {
    Node {
        id: id.into(),
        cluster: "hostile-test".into(),
        ..Default::default()
    }
}

fn sotw_req(type_url: &str, names: Vec<String>, version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: type_url.into(),
        resource_names: names,
        version_info: version.into(),
        response_nonce: nonce.into(),
        node: Some(node("hostile-sotw")),
        ..Default::default()
    }
}

fn delta_req(type_url: &str, subscribe: Vec<String>, nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.into(),
        resource_names_subscribe: subscribe,
        response_nonce: nonce.into(),
        node: Some(node("hostile-delta")),
        ..Default::default()
    }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A small deterministic PRNG (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// A valid UTF-8 string of `n` random characters, ASCII and beyond.
    fn text(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| {
                let c = self.next();
                if c.is_multiple_of(4) {
                    char::from_u32(0xa0 + (c >> 8) as u32 % 0xd000).unwrap_or('?')
                } else {
                    char::from(b'!' + (c >> 8) as u8 % 94)
                }
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------
// The server under test.

/// `pylon-xds serve` as a child process; killed on drop.
struct Server {
    child: Child,
    dir: tempfile::TempDir,
    xds: SocketAddr,
    admin: SocketAddr,
    generation: u32,
}

impl Server {
    async fn start() -> Server {
        Server::start_with_env(&[]).await
    }

    async fn start_with_env(env: &[(&str, &str)]) -> Server {
        Server::start_with(env, &[], None).await
    }

    /// `pylon-xds serve` with `env`, `args` after the usual ones, and, with
    /// `nofile`, a soft and hard `RLIMIT_NOFILE` of that many descriptors.
    async fn start_with(env: &[(&str, &str)], args: &[&str], nofile: Option<u32>) -> Server {
        let dir = tempfile::tempdir().unwrap();
        // The config's directory is watched: the log lives beside it, not in
        // it, or each line logged would trigger a reload.
        std::fs::create_dir(dir.path().join("config")).unwrap();
        let config = dir.path().join("config/pylon.yaml");
        std::fs::write(&config, self::config(0)).unwrap();
        let xds = free_addr();
        let admin = free_addr();
        let mut command = match nofile {
            // `ulimit -n` sets both limits, so the binary cannot raise them.
            Some(n) => {
                let mut c = Command::new("sh");
                c.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\""), BIN]);
                c
            }
            None => Command::new(BIN),
        };
        let mut server = Server {
            child: command
                .arg("serve")
                .arg("--config")
                .arg(&config)
                .args(["--listen", &xds.to_string(), "--admin", &admin.to_string()])
                .args(["--debounce-ms", "20"])
                .args(args)
                .env("RUST_LOG", "warn")
                .envs(env.iter().copied())
                .stdout(Stdio::null())
                .stderr(Stdio::from(
                    std::fs::File::create(dir.path().join("pylon-xds.log")).unwrap(),
                ))
                .spawn()
                .unwrap(),
            dir,
            xds,
            admin,
            generation: 0,
        };
        let end = Instant::now() + DEADLINE;
        loop {
            if let Ok((200, _)) = control_plane::admin::get(admin, "/readyz").await {
                break;
            }
            server.assert_running();
            assert!(Instant::now() < end, "pylon-xds did not become ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server
    }

    fn write_config(&self) {
        let tmp = self.dir.path().join("config/.pylon.yaml.tmp");
        std::fs::write(&tmp, config(self.generation)).unwrap();
        std::fs::rename(&tmp, self.config_path()).unwrap();
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("config/pylon.yaml")
    }

    /// The server's log so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pylon-xds.log")).unwrap_or_default()
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("pylon-xds exited ({status}); log:\n{}", self.log());
        }
    }

    async fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.xds))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    async fn metrics(&mut self) -> Scrape {
        self.assert_running();
        let (code, body) = control_plane::admin::get(self.admin, "/metrics")
            .await
            .unwrap();
        assert_eq!(code, 200, "{body}");
        Scrape(body)
    }

    /// Polls `/metrics` until `ok` holds; returns that scrape.
    async fn metrics_until(&mut self, what: &str, ok: impl Fn(&Scrape) -> bool) -> Scrape {
        let end = Instant::now() + DEADLINE;
        loop {
            let m = self.metrics().await;
            if ok(&m) {
                return m;
            }
            assert!(
                Instant::now() < end,
                "timed out waiting for {what}; last scrape:\n{}",
                m.0
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Edits the YAML (a new cluster `gen-N`); returns the new cluster's name.
    fn edit(&mut self) -> String {
        self.generation += 1;
        self.write_config();
        format!("gen-{}", self.generation)
    }

    /// The server is up, `watcher` (connected before the abuse) receives a
    /// live edit, and a new delta client gets the edited config.
    async fn assert_serves_live_edit(&mut self, watcher: &mut Watcher) {
        self.assert_running();
        let (code, _) = control_plane::admin::get(self.admin, "/healthz")
            .await
            .unwrap();
        assert_eq!(code, 200);
        let name = self.edit();
        watcher.wait_for_cluster(&name).await;
        let mut fresh = Stream::delta(&self.channel().await).await;
        fresh.send(delta_req(CLUSTER, vec![], "")).await;
        let r = fresh.recv().await;
        let names: Vec<&str> = r.resources.iter().map(|r| r.name.as_str()).collect();
        assert!(names.contains(&name.as_str()), "{names:?}");
        self.assert_running();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `/metrics` body.
struct Scrape(String);

impl Scrape {
    /// The value of an unlabelled sample.
    fn get(&self, name: &str) -> f64 {
        self.0
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not in:\n{}", self.0))
    }

    fn streams(&self) -> f64 {
        self.get("pylon_xds_connected_streams")
    }

    fn tasks(&self) -> f64 {
        self.get("pylon_xds_tokio_alive_tasks")
    }

    fn rss_mib(&self) -> f64 {
        self.get("pylon_xds_process_resident_memory_bytes") / (1024.0 * 1024.0)
    }
}

// ---------------------------------------------------------------------------
// Clients.

/// One bidirectional gRPC stream: requests in, responses (or a status) out.
struct Stream<Req, Resp> {
    tx: mpsc::Sender<Req>,
    rx: Streaming<Resp>,
}

impl Stream<DiscoveryRequest, DiscoveryResponse> {
    async fn sotw(channel: &Channel) -> Self {
        let (tx, rx) = mpsc::channel(16);
        let rx = AggregatedDiscoveryServiceClient::new(channel.clone())
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Stream { tx, rx }
    }
}

impl Stream<DeltaDiscoveryRequest, DeltaDiscoveryResponse> {
    async fn delta(channel: &Channel) -> Self {
        let (tx, rx) = mpsc::channel(16);
        let rx = AggregatedDiscoveryServiceClient::new(channel.clone())
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Stream { tx, rx }
    }
}

impl Stream<Vec<u8>, Vec<u8>> {
    /// A stream on `path` whose messages are raw bytes, framed by gRPC only.
    async fn raw(channel: &Channel, path: &'static str) -> Self {
        let (tx, rx) = mpsc::channel(16);
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let rx = grpc
            .streaming(
                tonic::Request::new(ReceiverStream::new(rx)),
                PathAndQuery::from_static(path),
                RawCodec,
            )
            .await
            .unwrap()
            .into_inner();
        Stream { tx, rx }
    }
}

impl<Req, Resp> Stream<Req, Resp> {
    async fn send(&self, r: Req) {
        // The server may already have ended the stream; what it answered is
        // what the caller checks next.
        let _ = self.tx.send(r).await;
    }

    /// The next message, error or end of stream, within the deadline.
    async fn next(&mut self) -> Option<Result<Resp, Status>> {
        tokio::time::timeout(DEADLINE, self.rx.next())
            .await
            .expect("the server answered within the deadline")
    }

    async fn recv(&mut self) -> Resp {
        match self.next().await {
            Some(Ok(r)) => r,
            Some(Err(s)) => panic!("expected a response, got {s:?}"),
            None => panic!("expected a response, the stream ended"),
        }
    }

    /// The status that ends the stream after a request the server could not
    /// decode. The decoder's error reaches the stream's task (`server::drive`)
    /// as an `Err` from the request stream, and only that task can send it on.
    async fn decode_error(&mut self) -> Status {
        match self.next().await {
            Some(Err(s)) => s,
            Some(Ok(_)) => panic!("expected the decoder's error status, got a response"),
            None => panic!(
                "expected the decoder's error status, the stream ended with OK: \
                 server::drive must send the request stream's Err(status) to the client"
            ),
        }
    }

    /// The status that ends the stream; fails on a response or a clean end.
    async fn status(&mut self) -> Status {
        match self.next().await {
            Some(Err(s)) => s,
            Some(Ok(_)) => panic!("expected an error status, got a response"),
            None => panic!("expected an error status, the stream ended with OK"),
        }
    }
}

/// A well-behaved SotW ADS client subscribed to every cluster, ACKing all.
struct Watcher {
    stream: Stream<DiscoveryRequest, DiscoveryResponse>,
}

impl Watcher {
    async fn open(server: &Server) -> Watcher {
        let mut stream = Stream::sotw(&server.channel().await).await;
        stream
            .send(DiscoveryRequest {
                node: Some(node("well-behaved")),
                ..sotw_req(CLUSTER, vec![], "", "")
            })
            .await;
        let first = stream.recv().await;
        assert_eq!(first.type_url, CLUSTER);
        let mut w = Watcher { stream };
        w.ack(&first).await;
        w
    }

    async fn ack(&mut self, r: &DiscoveryResponse) {
        self.stream
            .send(sotw_req(CLUSTER, vec![], &r.version_info, &r.nonce))
            .await;
    }

    async fn wait_for_cluster(&mut self, name: &str) {
        let end = Instant::now() + DEADLINE;
        loop {
            let r = self.stream.recv().await;
            self.ack(&r).await;
            if common::cluster_names(&r).iter().any(|n| n == name) {
                return;
            }
            assert!(Instant::now() < end, "the edit adding {name} never arrived");
        }
    }
}

/// A tonic codec whose messages are raw bytes, to put anything on the wire.
#[derive(Debug, Clone, Copy)]
struct RawCodec;

#[derive(Debug)]
struct RawEncoder;

#[derive(Debug)]
struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

/// `msg` encoded, with every occurrence of `marker` overwritten by bytes
/// that are not UTF-8 (same length, so the framing stays valid).
fn with_invalid_utf8(msg: &impl Message, marker: &[u8]) -> Vec<u8> {
    let mut bytes = msg.encode_to_vec();
    let mut found = 0;
    let mut i = 0;
    while i + marker.len() <= bytes.len() {
        if &bytes[i..i + marker.len()] == marker {
            bytes[i..i + marker.len()].fill(0xff);
            found += 1;
            i += marker.len();
        } else {
            i += 1;
        }
    }
    assert!(found > 0, "marker not found");
    bytes
}

// ---------------------------------------------------------------------------
// Case 1: unknown and missing type URLs.

#[tokio::test]
async fn unknown_type_urls_are_ignored_and_counted_and_a_missing_one_is_invalid() {
    let _alone = alone().await;
    let mut server = Server::start().await;
    let mut watcher = Watcher::open(&server).await;
    let channel = server.channel().await;
    let mut rng = Rng(0x1234_5678);

    // SotW ADS: unknown types (odd, long, non-ASCII), then a known type on
    // the same stream is answered, and it is the first thing answered.
    let unknown: Vec<String> = (0..200)
        .map(|i| format!("type.googleapis.com/hostile.v3.Unknown{i}"))
        .chain([
            "*".to_string(),
            "type.googleapis.com/".to_string(),
            format!("type.googleapis.com/{}", "x".repeat(64 * 1024)),
            rng.text(300),
        ])
        .collect();
    let mut sotw = Stream::sotw(&channel).await;
    for t in &unknown {
        sotw.send(sotw_req(t, vec!["a".into()], "", "")).await;
    }
    sotw.send(sotw_req(CLUSTER, vec![], "", "")).await;
    let cds = sotw.recv().await;
    assert_eq!(cds.type_url, CLUSTER, "an unknown type was answered");
    sotw.send(sotw_req(CLUSTER, vec![], &cds.version_info, &cds.nonce))
        .await;
    // Unknown types after an ACK, with a nonce: still ignored.
    sotw.send(sotw_req(&unknown[0], vec![], "", &cds.nonce))
        .await;
    sotw.send(sotw_req(ENDPOINT, vec!["a".into()], "", ""))
        .await;
    let eds = sotw.recv().await;
    assert_eq!(eds.type_url, ENDPOINT);

    // Delta ADS: the same.
    let mut delta = Stream::delta(&channel).await;
    for t in &unknown {
        delta.send(delta_req(t, vec!["a".into()], "")).await;
    }
    delta.send(delta_req(CLUSTER, vec![], "")).await;
    let dcds = delta.recv().await;
    assert_eq!(dcds.type_url, CLUSTER, "an unknown type was answered");
    assert_eq!(dcds.resources.len(), 3);
    delta.send(delta_req(CLUSTER, vec![], &dcds.nonce)).await;

    let expected = 2 * (unknown.len() + 1) - 1;
    let m = server
        .metrics_until("the unknown-type counter", |m| {
            m.get("pylon_xds_unknown_type_requests_total") >= expected as f64
        })
        .await;
    let counted = m.get("pylon_xds_unknown_type_requests_total");
    eprintln!("unknown type URLs sent: {expected}, counted: {counted}");
    assert_eq!(counted, expected as f64);

    // An empty type_url on ADS: INVALID_ARGUMENT, at the start of a stream or
    // in the middle of one, SotW or delta.
    let mut codes = Vec::new();
    let mut s = Stream::sotw(&channel).await;
    s.send(sotw_req("", vec![], "", "")).await;
    codes.push(("sotw, first request", s.status().await));
    let mut s = Stream::sotw(&channel).await;
    s.send(sotw_req(CLUSTER, vec![], "", "")).await;
    let first = s.recv().await;
    s.send(sotw_req("", vec![], &first.version_info, &first.nonce))
        .await;
    codes.push(("sotw, after a response", s.status().await));
    let mut d = Stream::delta(&channel).await;
    d.send(delta_req("", vec!["a".into()], "")).await;
    codes.push(("delta, first request", d.status().await));
    for (what, status) in &codes {
        eprintln!(
            "empty type_url on ADS ({what}): {:?} {:?}",
            status.code(),
            status.message()
        );
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(status.message().contains("type_url"), "{status:?}");
    }
    // On a single-type service the type is implicit.
    let (tx, rx) = mpsc::channel(1);
    tx.send(sotw_req("", vec![], "", "")).await.unwrap();
    let mut cds_service = ClusterDiscoveryServiceClient::new(channel.clone())
        .stream_clusters(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let r = tokio::time::timeout(DEADLINE, cds_service.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.type_url, CLUSTER);
    drop((tx, cds_service));

    // The abusive streams are still open and get the live edit too.
    server.assert_serves_live_edit(&mut watcher).await;
    let pushed = sotw.recv().await;
    assert_eq!(pushed.type_url, CLUSTER);
    let pushed = delta.recv().await;
    assert_eq!(pushed.type_url, CLUSTER);
    server
        .metrics_until("the failed streams to be closed", |m| m.streams() == 3.0)
        .await;
}

// ---------------------------------------------------------------------------
// Case 2: huge resource name lists. (A request over the size limit is in
// `undecodable_frames_end_their_stream_with_a_grpc_error`.)

#[tokio::test]
async fn huge_name_lists_are_served_up_to_the_cap_and_refused_beyond_it() {
    let _alone = alone().await;
    let mut server = Server::start().await;
    let mut watcher = Watcher::open(&server).await;
    let channel = server.channel().await;

    // 100,000 names (about 1.3 MB, under the 4 MiB message limit): answered
    // with the two that exist.
    let names = |n: usize| -> Vec<String> {
        ["a".to_string(), "b".to_string()]
            .into_iter()
            .chain((2..n).map(|i| format!("hostile-{i:07}")))
            .collect()
    };
    let at_cap = names(MAX_NAMES);
    let mut s = Stream::sotw(&channel).await;
    let started = Instant::now();
    s.send(sotw_req(ENDPOINT, at_cap.clone(), "", "")).await;
    let eds = s.recv().await;
    eprintln!(
        "SotW EDS request with {} names ({} bytes) answered in {:?}",
        at_cap.len(),
        sotw_req(ENDPOINT, at_cap.clone(), "", "").encoded_len(),
        started.elapsed()
    );
    let got: Vec<String> = eds
        .resources
        .iter()
        .map(|a| {
            ClusterLoadAssignment::decode(a.value.as_slice())
                .unwrap()
                .cluster_name
        })
        .collect();
    assert_eq!(got, ["a", "b"]);
    // The ACK repeats the 100,000 names and is not answered: the next answer
    // on the stream is the one to a CDS request sent after it.
    s.send(sotw_req(ENDPOINT, at_cap, &eds.version_info, &eds.nonce))
        .await;
    s.send(sotw_req(CLUSTER, vec![], "", "")).await;
    assert_eq!(s.recv().await.type_url, CLUSTER);

    // One name more than the cap: RESOURCE_EXHAUSTED, and the stream ends.
    s.send(sotw_req(ENDPOINT, names(MAX_NAMES + 1), "", ""))
        .await;
    let st = s.status().await;
    eprintln!(
        "SotW, {} names: {:?} {:?}",
        MAX_NAMES + 1,
        st.code(),
        st.message()
    );
    assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");

    // Delta: in one request, and adding up over several.
    let mut d = Stream::delta(&channel).await;
    d.send(delta_req(ENDPOINT, names(MAX_NAMES + 1), "")).await;
    let st = d.status().await;
    eprintln!(
        "delta, {} names in one request: {:?}",
        MAX_NAMES + 1,
        st.code()
    );
    assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
    let mut d = Stream::delta(&channel).await;
    let all = names(MAX_NAMES + 2);
    let (first, second) = all.split_at(all.len() / 2);
    d.send(delta_req(ENDPOINT, first.to_vec(), "")).await;
    let r = d.recv().await;
    assert_eq!(r.resources.len(), 2);
    d.send(delta_req(ENDPOINT, second.to_vec(), &r.nonce)).await;
    let st = d.status().await;
    eprintln!(
        "delta, {} names in two requests: {:?} {:?}",
        all.len(),
        st.code(),
        st.message()
    );
    assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");

    server.assert_serves_live_edit(&mut watcher).await;
    server
        .metrics_until("the refused streams to be closed", |m| m.streams() == 1.0)
        .await;
}

// ---------------------------------------------------------------------------
// Case 3: garbage that still decodes: random `initial_resource_versions`, a
// NACK carrying a garbage `Any`, empty frames. (Frames that do not decode are
// in the next test.)

#[tokio::test]
async fn garbage_that_decodes_is_answered_by_the_protocol_rules() {
    let _alone = alone().await;
    let mut server = Server::start().await;
    let mut watcher = Watcher::open(&server).await;
    let channel = server.channel().await;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);

    // 50,000 random names and versions the client claims to hold: it is sent
    // every cluster (no version matches) and told to remove all 50,000.
    let initial: HashMap<String, String> = (0..50_000)
        .map(|i| (format!("{i}-{}", rng.text(12)), rng.text(8)))
        .collect();
    let mut d = Stream::delta(&channel).await;
    let started = Instant::now();
    d.send(DeltaDiscoveryRequest {
        initial_resource_versions: initial.clone(),
        ..delta_req(CLUSTER, vec![], "")
    })
    .await;
    let r = d.recv().await;
    eprintln!(
        "delta CDS with 50,000 random initial_resource_versions answered in {:?}: {} resources, {} removed",
        started.elapsed(),
        r.resources.len(),
        r.removed_resources.len()
    );
    assert_eq!(r.resources.len(), 3);
    assert_eq!(r.removed_resources.len(), initial.len());
    assert!(r.removed_resources.iter().all(|n| initial.contains_key(n)));

    // A NACK whose details hold an Any with a garbage type URL and random
    // bytes: recorded like any NACK; the stream goes on.
    d.send(DeltaDiscoveryRequest {
        error_detail: Some(rpc::Status {
            code: 3,
            message: "garbage detail".into(),
            details: vec![Any {
                type_url: rng.text(40),
                value: rng.bytes(4096),
            }],
        }),
        ..delta_req(CLUSTER, vec![], &r.nonce)
    })
    .await;

    // An empty frame decodes as an empty request: no type URL on ADS.
    for path in [ADS_SOTW, ADS_DELTA] {
        let mut raw = Stream::raw(&channel, path).await;
        raw.send(Vec::new()).await;
        let st = raw.status().await;
        eprintln!("{path}, empty frame: {:?} {:?}", st.code(), st.message());
        assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");
    }

    server.assert_serves_live_edit(&mut watcher).await;
    // The stream that sent the garbage NACK still gets updates.
    let pushed = d.recv().await;
    assert_eq!(pushed.type_url, CLUSTER);
    let (_, nodes) = control_plane::admin::get(server.admin, "/nodes")
        .await
        .unwrap();
    assert!(nodes.contains("garbage detail"), "{nodes}");
}

// ---------------------------------------------------------------------------
// Cases 2 and 3, the frames that cannot be decoded: too large, not protobuf,
// or protobuf with strings that are not UTF-8. Each ends its own stream with
// the decoder's gRPC error, after a valid request on the same stream was
// answered; the connection and every other stream go on.

#[tokio::test]
async fn undecodable_frames_end_their_stream_with_a_grpc_error() {
    let _alone = alone().await;
    let mut server = Server::start().await;
    let mut watcher = Watcher::open(&server).await;
    let channel = server.channel().await;

    // Larger than the server's maximum message size (4 MiB): OUT_OF_RANGE,
    // from the length prefix, before the message is buffered.
    let mut s = Stream::sotw(&channel).await;
    s.send(sotw_req(CLUSTER, vec![], "", "")).await;
    assert_eq!(s.recv().await.type_url, CLUSTER);
    let big: Vec<String> = (0..5)
        .map(|i| format!("{i}{}", "x".repeat(1 << 20)))
        .collect();
    s.send(sotw_req(ENDPOINT, big, "", "")).await;
    let st = s.decode_error().await;
    eprintln!("SotW, 5 MiB request: {:?} {:?}", st.code(), st.message());
    assert_eq!(st.code(), Code::OutOfRange, "{st:?}");
    let mut raw = Stream::raw(&channel, ADS_DELTA).await;
    raw.send(delta_req(CLUSTER, vec![], "").encode_to_vec())
        .await;
    assert!(!raw.recv().await.is_empty());
    raw.send(vec![0; (4 << 20) + 1]).await;
    let st = raw.decode_error().await;
    eprintln!(
        "delta, 4 MiB + 1 byte raw frame: {:?} {:?}",
        st.code(),
        st.message()
    );
    assert_eq!(st.code(), Code::OutOfRange, "{st:?}");

    // Frames prost cannot decode: INTERNAL "failed to decode ...".
    let marker = b"NOTUTF8!";
    let bad_key = DeltaDiscoveryRequest {
        initial_resource_versions: [("NOTUTF8!".to_string(), "v1".to_string())].into(),
        ..delta_req(CLUSTER, vec![], "")
    };
    let bad_any = DeltaDiscoveryRequest {
        error_detail: Some(rpc::Status {
            code: 3,
            message: "m".into(),
            details: vec![Any {
                type_url: "NOTUTF8!".into(),
                value: vec![0xff; 64],
            }],
        }),
        ..delta_req(CLUSTER, vec![], "")
    };
    let bad_sotw_name = sotw_req(CLUSTER, vec!["NOTUTF8!".into()], "", "");
    let mut random = vec![0x07]; // field 0, wire type 7: never valid protobuf
    random.extend(Rng(0x5eed).bytes(1024));
    let truncated = {
        // Cut inside the node: its length prefix runs past the end.
        let mut b = delta_req(CLUSTER, vec![], "").encode_to_vec();
        b.truncate(10);
        b
    };
    let frames: Vec<(&str, &'static str, Vec<u8>)> = vec![
        (
            "delta: non-UTF-8 initial_resource_versions key",
            ADS_DELTA,
            with_invalid_utf8(&bad_key, marker),
        ),
        (
            "delta: non-UTF-8 type URL in error_detail.details",
            ADS_DELTA,
            with_invalid_utf8(&bad_any, marker),
        ),
        ("delta: random bytes", ADS_DELTA, random.clone()),
        ("delta: truncated message", ADS_DELTA, truncated),
        (
            "sotw: non-UTF-8 resource name",
            ADS_SOTW,
            with_invalid_utf8(&bad_sotw_name, marker),
        ),
        ("sotw: random bytes", ADS_SOTW, random),
    ];
    for (what, path, frame) in frames {
        // First a valid request on the same stream, answered.
        let mut raw = Stream::raw(&channel, path).await;
        let valid = if path == ADS_DELTA {
            delta_req(CLUSTER, vec![], "").encode_to_vec()
        } else {
            sotw_req(CLUSTER, vec![], "", "").encode_to_vec()
        };
        raw.send(valid).await;
        assert!(!raw.recv().await.is_empty());
        raw.send(frame).await;
        let st = raw.decode_error().await;
        eprintln!("{what}: {:?} {:?}", st.code(), st.message());
        assert_eq!(st.code(), Code::Internal, "{what}: {st:?}");
        assert!(st.message().contains("failed to decode"), "{what}: {st:?}");
    }

    server.assert_serves_live_edit(&mut watcher).await;
    server
        .metrics_until("the failed streams to be closed", |m| m.streams() == 1.0)
        .await;
}

// ---------------------------------------------------------------------------
// Case 4: thousands of streams opened and dropped.

/// Streams opened per round, half SotW, half delta.
const STORM_STREAMS: usize = 2_000;
/// Connections they share.
const STORM_CONNECTIONS: usize = 8;
/// Connections of each round closed at the TCP level with their streams open.
const STORM_KILLED_CONNECTIONS: usize = 2;

/// A connector that remembers its sockets so a test can cut them.
#[derive(Clone)]
struct CuttableConnector {
    addr: SocketAddr,
    sockets: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl CuttableConnector {
    fn cut(&self) {
        for s in self.sockets.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Service<Uri> for CuttableConnector {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let (addr, sockets) = (self.addr, Arc::clone(&self.sockets));
        Box::pin(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let std = tcp.into_std()?;
            sockets.lock().unwrap().push(std.try_clone()?);
            Ok(TokioIo::new(tokio::net::TcpStream::from_std(std)?))
        })
    }
}

/// Reads a stream to its end; true if it ended with OK.
async fn drain<T>(rx: &mut Streaming<T>) -> bool {
    loop {
        match rx.next().await {
            Some(Ok(_)) => {}
            Some(Err(_)) => return false,
            None => return true,
        }
    }
}

enum Opened {
    Sotw(Stream<DiscoveryRequest, DiscoveryResponse>),
    Delta(Stream<DeltaDiscoveryRequest, DeltaDiscoveryResponse>),
}

/// Opens [`STORM_STREAMS`] streams, waits for the server to count them, reads
/// the first response on a third of them, then drops them all: whole
/// connections cut, streams reset (response dropped while the request side is
/// open), and streams half-closed. Returns the scrape taken at the peak.
async fn storm(server: &mut Server, round: usize, baseline: f64) -> Scrape {
    let mut connectors = Vec::new();
    let mut channels = Vec::new();
    for _ in 0..STORM_CONNECTIONS {
        let c = CuttableConnector {
            addr: server.xds,
            sockets: Arc::default(),
        };
        let ch = Endpoint::from_shared(format!("http://{}", server.xds))
            .unwrap()
            .connect_with_connector(c.clone())
            .await
            .unwrap();
        connectors.push(c);
        channels.push(ch);
    }
    let opened = futures::future::join_all((0..STORM_STREAMS).map(|i| {
        let ch = channels[i % STORM_CONNECTIONS].clone();
        async move {
            let id = format!("storm-{round}-{i}");
            if i % 2 == 0 {
                let s = Stream::sotw(&ch).await;
                s.send(DiscoveryRequest {
                    node: Some(node(&id)),
                    ..sotw_req(CLUSTER, vec![], "", "")
                })
                .await;
                Opened::Sotw(s)
            } else {
                let s = Stream::delta(&ch).await;
                s.send(DeltaDiscoveryRequest {
                    node: Some(node(&id)),
                    ..delta_req(CLUSTER, vec![], "")
                })
                .await;
                Opened::Delta(s)
            }
        }
    }))
    .await;
    let peak = server
        .metrics_until("every storm stream to be open", |m| {
            m.streams() == baseline + STORM_STREAMS as f64
        })
        .await;
    let mut opened: Vec<Option<Opened>> = opened.into_iter().map(Some).collect();
    for s in opened.iter_mut().step_by(3).flatten() {
        match s {
            Opened::Sotw(s) => assert_eq!(s.recv().await.type_url, CLUSTER),
            Opened::Delta(s) => assert_eq!(s.recv().await.type_url, CLUSTER),
        }
    }
    // Cut whole connections with their streams open.
    for c in &connectors[..STORM_KILLED_CONNECTIONS] {
        c.cut();
    }
    // The rest: reset half of them (response side dropped while the request
    // side is open: RST_STREAM), half-close the others (request side ended)
    // and read those until the server ends them.
    let mut open_requests = Vec::new();
    let mut sotw_half_closed = Vec::new();
    let mut delta_half_closed = Vec::new();
    for (i, slot) in opened.iter_mut().enumerate() {
        if i % STORM_CONNECTIONS < STORM_KILLED_CONNECTIONS {
            continue;
        }
        match (slot.take(), i % 4 < 2) {
            (Some(Opened::Sotw(Stream { tx, rx })), true) => {
                drop(rx);
                open_requests.push(Box::new(tx) as Box<dyn Send>);
            }
            (Some(Opened::Delta(Stream { tx, rx })), true) => {
                drop(rx);
                open_requests.push(Box::new(tx) as Box<dyn Send>);
            }
            (Some(Opened::Sotw(Stream { tx, rx })), false) => {
                drop(tx);
                sotw_half_closed.push(rx);
            }
            (Some(Opened::Delta(Stream { tx, rx })), false) => {
                drop(tx);
                delta_half_closed.push(rx);
            }
            (None, _) => {}
        }
    }
    let ended = tokio::time::timeout(
        DEADLINE,
        futures::future::join(
            futures::future::join_all(sotw_half_closed.iter_mut().map(drain)),
            futures::future::join_all(delta_half_closed.iter_mut().map(drain)),
        ),
    )
    .await
    .expect("the server ends half-closed streams");
    assert!(ended.0.iter().chain(&ended.1).all(|ok| *ok));
    drop(open_requests);
    drop(opened);
    drop(channels);
    peak
}

/// Storm rounds that bring the allocator's heap to its working size.
const WARM_UP_ROUNDS: usize = 4;
/// Storm rounds measured after the warm-up.
const MEASURED_ROUNDS: usize = 2;
/// The most RSS the measured rounds may add (they open and drop
/// `MEASURED_ROUNDS * STORM_STREAMS` streams): a leak of about 800 bytes per
/// stream would exceed it.
const MEASURED_GROWTH_MIB: f64 = 3.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_streams_opened_and_dropped_leak_nothing() {
    let _alone = alone().await;
    // One malloc arena: glibc's per-thread arenas make RSS drift by several
    // MiB a round depending on which worker thread freed what, which would
    // hide a leak; with one arena the heap settles and stays flat. What the
    // server allocates is the same either way.
    let mut server = Server::start_with_env(&[("MALLOC_ARENA_MAX", "1")]).await;
    let mut watcher = Watcher::open(&server).await;
    let base = server.metrics().await;
    let (streams0, tasks0, rss0) = (base.streams(), base.tasks(), base.rss_mib());
    eprintln!("baseline: {streams0} streams, {tasks0} tasks, {rss0:.1} MiB RSS");
    let mut first_peak = 0.0;
    let mut after = vec![rss0];
    for round in 1..=WARM_UP_ROUNDS + MEASURED_ROUNDS {
        let started = Instant::now();
        let peak = storm(&mut server, round, streams0).await;
        let settled = server
            .metrics_until("streams and tasks back to their baseline", |m| {
                m.streams() == streams0 && (m.tasks() - tasks0).abs() <= 2.0
            })
            .await;
        eprintln!(
            "round {round}{}: peak {} streams, {} tasks, {:.1} MiB RSS; after: {} streams, {} tasks, {:.1} MiB RSS ({:?})",
            if round <= WARM_UP_ROUNDS { " (warm-up)" } else { "" },
            peak.streams(),
            peak.tasks(),
            peak.rss_mib(),
            settled.streams(),
            settled.tasks(),
            settled.rss_mib(),
            started.elapsed()
        );
        // Every stream had its own task while open (at least).
        assert!(peak.tasks() >= tasks0 + STORM_STREAMS as f64);
        if round == 1 {
            first_peak = peak.rss_mib() - rss0;
        }
        after.push(settled.rss_mib());
        server.assert_serves_live_edit(&mut watcher).await;
    }
    let retained = after[WARM_UP_ROUNDS] - rss0;
    let measured = after[WARM_UP_ROUNDS + MEASURED_ROUNDS] - after[WARM_UP_ROUNDS];
    let streams = (MEASURED_ROUNDS * STORM_STREAMS) as f64;
    eprintln!(
        "RSS: {first_peak:+.1} MiB at the first peak ({:.1} KiB per open stream), {retained:+.1} MiB kept after {WARM_UP_ROUNDS} warm-up rounds, {measured:+.1} MiB over {MEASURED_ROUNDS} measured rounds ({:.0} bytes per stream opened and dropped)",
        first_peak * 1024.0 / STORM_STREAMS as f64,
        measured * 1024.0 * 1024.0 / streams
    );
    // The allocator keeps the heap it grew for the peak; it must not keep
    // more than twice the first peak's worth.
    assert!(
        retained < 2.0 * first_peak,
        "{retained:.1} MiB kept after the warm-up, first peak {first_peak:.1} MiB"
    );
    assert!(
        measured < MEASURED_GROWTH_MIB,
        "RSS grew by {measured:.1} MiB over {MEASURED_ROUNDS} measured rounds"
    );
}

// ---------------------------------------------------------------------------
// Cases 5 to 8: what one client can make the server keep. Each of the
// first three probes opens streams whose requests carry large client-chosen
// strings, checks the status each is refused with, and that once they are
// closed the server's memory is back near where it started, its `/metrics`
// stays small and its log does not grow with what clients send. The fourth
// fills the server up to `--max-streams`.

/// Streams each probe opens at once.
const PROBE_STREAMS: usize = 100;
/// How far above its baseline RSS may stay once a probe's streams are
/// closed. Refused requests are still read and decoded (up to the 4 MiB
/// message limit) before they are refused, and the allocator keeps part of
/// the heap that grew for them: 6 to 16 MiB here, against 185 to 708 MiB
/// kept before the bounds, when streams held what they were sent.
const PROBE_RETAINED_MIB: f64 = 32.0;

/// How a probe stream's first request was answered.
#[derive(Debug)]
enum Answer {
    Response,
    Refused(Status),
    Ended,
}

impl Answer {
    fn refused_with(&self, code: Code) -> bool {
        matches!(self, Answer::Refused(s) if s.code() == code)
    }
}

async fn answer<T>(s: &mut Stream<T, DiscoveryResponse>) -> (Answer, Option<DiscoveryResponse>) {
    match s.next().await {
        Some(Ok(r)) => (Answer::Response, Some(r)),
        Some(Err(st)) => (Answer::Refused(st), None),
        None => (Answer::Ended, None),
    }
}

/// Waits until RSS is back within [`PROBE_RETAINED_MIB`] of `baseline`;
/// returns the last scrape either way, for the caller to report and assert.
async fn rss_settles(server: &mut Server, baseline: f64) -> Scrape {
    let end = Instant::now() + DEADLINE;
    loop {
        let m = server.metrics().await;
        if m.rss_mib() < baseline + PROBE_RETAINED_MIB || Instant::now() > end {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The NACK probe: node ids of 1 MiB (over the node cap), then node ids of
/// 32 KiB (under it) NACKing once each. Before the bounds, every NACK added
/// a metric label holding the node id and a log line holding it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacks_from_long_node_ids_leave_no_trace_in_metrics_logs_or_memory() {
    let _alone = alone().await;
    let mut server = Server::start().await;
    let mut watcher = Watcher::open(&server).await;
    let channel = server.channel().await;
    let base = server.metrics().await;
    let (rss0, log0) = (base.rss_mib(), server.log().len());

    let mut answers = Vec::new();
    let mut long_nacks = Vec::new();
    let mut open = Vec::new();
    for (size, count) in [(1 << 20, PROBE_STREAMS), (32 << 10, PROBE_STREAMS)] {
        let mut refused = 0;
        for i in 0..count {
            let id = format!("{i:04}-{}", "n".repeat(size));
            let mut s = Stream::sotw(&channel).await;
            s.send(DiscoveryRequest {
                node: Some(node(&id)),
                ..sotw_req(CLUSTER, vec![], "", "")
            })
            .await;
            let (a, r) = answer(&mut s).await;
            if let Some(r) = r {
                s.send(DiscoveryRequest {
                    error_detail: Some(rpc::Status {
                        code: 3,
                        message: format!("rejected by {}", &id[..4]),
                        details: vec![],
                    }),
                    ..sotw_req(CLUSTER, vec![], "", &r.nonce)
                })
                .await;
                open.push(s);
            } else {
                refused += 1;
            }
            if size == 1 << 20 {
                answers.push(a);
            }
        }
        long_nacks.push((size, count, refused));
    }
    let nacked = server
        .metrics_until("the NACKs to be counted", |m| {
            m.0.lines()
                .filter(|l| l.starts_with("pylon_xds_nacks_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
                >= open.len() as f64
        })
        .await;
    let peak_rss = nacked.rss_mib();
    let metrics_bytes = nacked.0.len();
    drop(open);
    server
        .metrics_until("the probe streams to be closed", |m| m.streams() == 1.0)
        .await;
    let settled = rss_settles(&mut server, rss0).await;
    let log_bytes = server.log().len() - log0;
    let nack_lines = server.log()[log0..]
        .lines()
        .filter(|l| l.contains("NACK"))
        .count();
    for (size, count, refused) in &long_nacks {
        eprintln!("{count} streams with {size}-byte node ids: {refused} refused");
    }
    eprintln!(
        "NACK probe: RSS {rss0:.1} MiB -> {peak_rss:.1} MiB with the streams open -> {:.1} MiB after they closed; /metrics {metrics_bytes} bytes; log +{log_bytes} bytes ({nack_lines} NACK lines)",
        settled.rss_mib()
    );
    eprintln!("first answer to a 1 MiB node id: {:?}", answers[0]);

    assert!(
        answers
            .iter()
            .all(|a| a.refused_with(Code::ResourceExhausted)),
        "every 1 MiB node must be refused with RESOURCE_EXHAUSTED: {:?}",
        answers
            .iter()
            .find(|a| !a.refused_with(Code::ResourceExhausted))
    );
    assert_eq!(
        long_nacks[1].2, 0,
        "32 KiB node ids are under the cap and served"
    );
    assert_eq!(
        nacked.get("pylon_xds_nacks_total{type=\"cds\"}"),
        PROBE_STREAMS as f64
    );
    assert_eq!(
        nacked.get("pylon_xds_refused_requests_total{reason=\"node_too_large\"}"),
        PROBE_STREAMS as f64
    );
    assert!(
        metrics_bytes < 64 << 10,
        "/metrics is {metrics_bytes} bytes"
    );
    assert!(log_bytes < 256 << 10, "the log grew by {log_bytes} bytes");
    assert!(
        settled.rss_mib() < rss0 + PROBE_RETAINED_MIB,
        "RSS {:.1} MiB after the streams closed, baseline {rss0:.1} MiB",
        settled.rss_mib()
    );
    server.assert_serves_live_edit(&mut watcher).await;
}

/// A node whose metadata is a few MiB (under the 4 MiB message limit).
fn fat_node(id: &str) -> Node {
    use envoy_types::pb::google::protobuf::{value, Struct, Value};
    let fields = (0..900)
        .map(|i| {
            (
                format!("key-{i:04}"),
                Value {
                    kind: Some(value::Kind::StringValue(format!("{i}{}", "m".repeat(4096)))),
                },
            )
        })
        .collect();
    Node {
        metadata: Some(Struct { fields }),
        ..node(id)
    }
}

/// The node-metadata probe: 100 streams whose node carries 3.6 MiB of
/// metadata. Before the bounds, each stream kept several copies of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_megabytes_of_metadata_are_refused() {
    let _alone = alone().await;
    let mut server = Server::start().await;
    let mut watcher = Watcher::open(&server).await;
    let base = server.metrics().await;
    let rss0 = base.rss_mib();
    let node_bytes = fat_node("fat-0").encoded_len();

    let channels = futures::future::join_all((0..4).map(|_| server.channel())).await;
    let mut streams = Vec::new();
    for i in 0..PROBE_STREAMS {
        let s = Stream::sotw(&channels[i % channels.len()]).await;
        s.send(DiscoveryRequest {
            node: Some(fat_node(&format!("fat-{i}"))),
            ..sotw_req(CLUSTER, vec![], "", "")
        })
        .await;
        streams.push(s);
    }
    let answers =
        futures::future::join_all(streams.iter_mut().map(|s| async move { answer(s).await.0 }))
            .await;
    let peak = server.metrics().await;
    drop(streams);
    drop(channels);
    server
        .metrics_until("the probe streams to be closed", |m| m.streams() == 1.0)
        .await;
    let settled = rss_settles(&mut server, rss0).await;
    eprintln!(
        "metadata probe ({PROBE_STREAMS} streams, {node_bytes}-byte nodes): RSS {rss0:.1} MiB -> {:.1} MiB with the streams open -> {:.1} MiB after they closed",
        peak.rss_mib(),
        settled.rss_mib()
    );
    eprintln!("first answer: {:?}", answers[0]);
    assert!(
        answers
            .iter()
            .all(|a| a.refused_with(Code::ResourceExhausted)),
        "every fat node must be refused with RESOURCE_EXHAUSTED: {:?}",
        answers
            .iter()
            .find(|a| !a.refused_with(Code::ResourceExhausted))
    );
    assert_eq!(
        settled.get("pylon_xds_refused_requests_total{reason=\"node_too_large\"}"),
        PROBE_STREAMS as f64
    );
    assert!(
        settled.rss_mib() < rss0 + PROBE_RETAINED_MIB,
        "RSS {:.1} MiB after the streams closed, baseline {rss0:.1} MiB",
        settled.rss_mib()
    );
    server.assert_serves_live_edit(&mut watcher).await;
}

/// The name probe: one delta stream subscribing, 100 times, to one new
/// 3 MiB name. Before the bounds, the stream kept every name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_resource_names_are_refused() {
    let _alone = alone().await;
    let mut server = Server::start().await;
    let mut watcher = Watcher::open(&server).await;
    let channel = server.channel().await;
    let rss0 = server.metrics().await.rss_mib();

    let mut d = Stream::delta(&channel).await;
    let mut answered = 0;
    let mut refusal = None;
    let mut nonce = String::new();
    for i in 0..PROBE_STREAMS {
        let name = format!("{i:03}{}", "x".repeat(3 << 20));
        d.send(delta_req(ENDPOINT, vec![name], &nonce)).await;
        if i == 0 {
            // The first request of a type that is not a wildcard is
            // answered only when something is served: nothing is.
            match tokio::time::timeout(Duration::from_secs(1), d.rx.next()).await {
                Ok(Some(Err(st))) => {
                    refusal = Some(st);
                    break;
                }
                Ok(Some(Ok(r))) => {
                    answered += 1;
                    nonce = r.nonce;
                }
                Ok(None) => break,
                Err(_) => {}
            }
        }
    }
    // A CDS request on the same stream: its answer shows every name request
    // before it was read.
    d.send(delta_req(CLUSTER, vec![], "")).await;
    let after = d.next().await;
    let peak_rss = server.metrics().await.rss_mib();
    drop(d);
    server
        .metrics_until("the probe stream to be closed", |m| m.streams() == 1.0)
        .await;
    let settled = rss_settles(&mut server, rss0).await;
    eprintln!(
        "name probe ({PROBE_STREAMS} requests of one 3 MiB name): RSS {rss0:.1} MiB -> {peak_rss:.1} MiB with the stream open -> {:.1} MiB after it closed; {answered} answered",
        settled.rss_mib()
    );
    eprintln!("refusal: {refusal:?}; then: {after:?}");
    let st = refusal.expect("a 3 MiB name is refused");
    assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
    assert!(st.message().contains("1024"), "{st:?}");
    assert_eq!(
        settled.get("pylon_xds_refused_requests_total{reason=\"name_too_long\"}"),
        1.0
    );
    assert!(
        settled.rss_mib() < rss0 + PROBE_RETAINED_MIB,
        "RSS {:.1} MiB after the stream closed, baseline {rss0:.1} MiB",
        settled.rss_mib()
    );
    server.assert_serves_live_edit(&mut watcher).await;
}

/// The stream limit: `--max-streams 20`, one held by the watcher.
#[tokio::test]
async fn streams_beyond_max_streams_are_unavailable() {
    let _alone = alone().await;
    const MAX: usize = 20;
    let mut server = Server::start_with(&[], &["--max-streams", &MAX.to_string()], None).await;
    let mut watcher = Watcher::open(&server).await;
    let channel = server.channel().await;
    let mut open = Vec::new();
    for i in 1..MAX {
        let mut s = Stream::sotw(&channel).await;
        s.send(DiscoveryRequest {
            node: Some(node(&format!("full-{i}"))),
            ..sotw_req(CLUSTER, vec![], "", "")
        })
        .await;
        assert_eq!(s.recv().await.type_url, CLUSTER);
        open.push(s);
    }
    let (_tx, rx) = mpsc::channel::<DiscoveryRequest>(1);
    let sotw = AggregatedDiscoveryServiceClient::new(channel.clone())
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .map(|_| ())
        .unwrap_err();
    let (_tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(1);
    let delta = AggregatedDiscoveryServiceClient::new(channel.clone())
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .map(|_| ())
        .unwrap_err();
    for (what, st) in [("SotW", &sotw), ("delta", &delta)] {
        eprintln!(
            "stream {} ({what}): {:?} {:?}",
            MAX + 1,
            st.code(),
            st.message()
        );
        assert_eq!(st.code(), Code::Unavailable, "{what}: {st:?}");
        assert!(st.message().contains("--max-streams"), "{st:?}");
    }
    let m = server.metrics().await;
    assert_eq!(m.streams(), MAX as f64);
    assert_eq!(
        m.get("pylon_xds_refused_requests_total{reason=\"too_many_streams\"}"),
        2.0
    );
    // A stream that ends makes room for one more.
    drop(open.pop());
    server
        .metrics_until("a stream to be closed", |m| m.streams() == (MAX - 1) as f64)
        .await;
    server.assert_serves_live_edit(&mut watcher).await;
}

// ---------------------------------------------------------------------------
// Case 9: no file descriptor left. Connections beyond the process's limit
// stay queued in the kernel while `accept` fails; the accept loops (tonic's
// for xDS, the admin's) must wait that out, not spin, and serve again once
// descriptors free up.

/// The descriptor limit the server runs under in this case.
const NOFILE: u32 = 64;
/// How long the server is watched while it has no descriptor left.
const EXHAUSTED_WINDOW: Duration = Duration::from_secs(3);

/// CPU time (user + system) the process has used, from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let per_second: u64 = String::from_utf8(
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    Duration::from_millis(ticks * 1000 / per_second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_is_waited_out_without_spinning() {
    let _alone = alone().await;
    let mut server = Server::start_with(
        &[("RUST_LOG", "info"), ("NO_COLOR", "1")],
        &[],
        Some(NOFILE),
    )
    .await;
    let mut watcher = Watcher::open(&server).await;
    assert!(
        server
            .log()
            .contains(&format!("file descriptors: at most {NOFILE} open at once")),
        "{}",
        server.log()
    );
    let pid = server.child.id();
    let log0 = server.log().len();

    // More connections than descriptors, to both ports: the kernel queues
    // what the server cannot accept.
    let mut held = Vec::new();
    for addr in [server.xds, server.admin] {
        for _ in 0..2 * NOFILE {
            held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
    }
    let end = Instant::now() + DEADLINE;
    let accept_warnings = |log: &str| log.lines().filter(|l| l.contains("accept failed")).count();
    let failing = |log: &str, listener: &str| {
        log.lines()
            .any(|l| l.contains("accept failed") && l.contains(listener))
    };
    while !(failing(&server.log()[log0..], "xds") && failing(&server.log()[log0..], "admin")) {
        assert!(
            Instant::now() < end,
            "no accept failure logged for both listeners:\n{}",
            &server.log()[log0..]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (cpu0, wall0, lines0) = (
        cpu_time(pid),
        Instant::now(),
        accept_warnings(&server.log()),
    );
    // A measurement window, not a wait for an event: the process is out of
    // descriptors throughout.
    tokio::time::sleep(EXHAUSTED_WINDOW).await;
    let (cpu, wall) = (cpu_time(pid) - cpu0, wall0.elapsed());
    let lines = accept_warnings(&server.log()) - lines0;
    let share = cpu.as_secs_f64() / wall.as_secs_f64();
    eprintln!(
        "out of descriptors for {wall:?}: {cpu:?} of CPU ({:.1}% of one core), {lines} accept warnings",
        share * 100.0
    );
    eprintln!(
        "{}",
        server.log()[log0..]
            .lines()
            .filter(|l| l.contains("accept failed"))
            .take(4)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(share < 0.3, "the server used {cpu:?} of CPU in {wall:?}");
    // One line a second per listener, give or take the window's edges.
    let bound = 2 * (wall.as_secs() as usize + 2);
    assert!(lines <= bound, "{lines} accept warnings in {wall:?}");

    // Descriptors free up: both ports serve again.
    drop(held);
    server.assert_serves_live_edit(&mut watcher).await;
    server.metrics().await;
}
