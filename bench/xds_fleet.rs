//! Control-plane fan-out benchmark: a fleet of scripted ADS clients on
//! loopback against one control plane, `pylon-xds serve` or the
//! go-control-plane peer (`bench/peers/go-control-plane`), measured the same
//! way. Run `xds-fleet --help` for the flags; BENCHMARKS.md has the method
//! and the figures.
//!
//! Each client does what Envoy does for CDS + EDS: a CDS wildcard request,
//! then EDS for every cluster name, ACKing every response (`--types cds`:
//! CDS only). SotW ACKs repeat every name, as Envoy's do. Streams are spread
//! over HTTP/2 connections, 500 per connection. Measured:
//!
//! - **sync**: wall time until every stream holds CDS and EDS, and the
//!   server's CPU meanwhile (the sum over its threads of
//!   `/proc/PID/task/TID/schedstat`, in nanoseconds);
//! - **memory per stream**: the server's VmRSS after the fleet synced minus
//!   before it connected, divided by the number of streams;
//! - **push**: the config is edited (one cluster's endpoint moves; with
//!   `--types cds`, its connect timeout); wall time from the write until
//!   every stream received the change, and the server's CPU meanwhile. For
//!   pylon-xds the write is of its YAML (the 20 ms debounce and the reload
//!   are included); for the peer, of the file `pylon-xds render` made of the
//!   same YAML beforehand (rendering is not timed);
//! - `--stuck P`: P percent of the streams stop reading once synced (on
//!   connections of their own with a 16 KiB window); pushes are timed to the
//!   others;
//! - `--storm`: after the edits the server is restarted on the same ports
//!   and every stream reconnects at once, as Envoy does, declaring what it
//!   holds; measured: the time until every stream is answered again, the
//!   server's peak memory (VmHWM), and `/healthz` probed every 20 ms from a
//!   thread of its own (pylon-xds only: the peer has no admin port).
//!
//! The last line printed is `json: {...}` with the same fields for both
//! servers. The load generator runs on the same machine: wall times are
//! upper bounds; server CPU is the server's own.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

#[path = "fleet_config.rs"]
mod fleet_config;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use fleet_config::config;
use prost::bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tonic::codegen::http;

const CLUSTER: &str = pylon::type_url::CLUSTER;
const ENDPOINT: &str = pylon::type_url::ENDPOINT;
/// Streams per HTTP/2 connection (both servers allow 1,024).
const STREAMS_PER_CONN: usize = 500;
/// How long any phase may take before the run is declared failed.
const DEADLINE: Duration = Duration::from_secs(300);
/// The stream window of the stuck clients' connections.
const STUCK_WINDOW: u32 = 16 * 1024;
/// `/healthz` answers slower than this are counted.
const HEALTHZ_BOUND: Duration = Duration::from_millis(100);

const HELP: &str = "\
xds-fleet: an ADS fleet on loopback against pylon-xds or go-control-plane

USAGE:
    xds-fleet [--server PATH | --peer go-control-plane] [OPTIONS]

SERVER:
    --server PATH      pylon-xds binary [default: target/release/pylon-xds];
                       also renders the peer's resources
    --peer NAME        serve with a peer instead: go-control-plane (built
                       from bench/peers/go-control-plane when missing or
                       older than its sources, with `go build`)
    --peer-bin PATH    the peer binary [default: target/peers/go-control-plane/xds-peer,
                       or $PYLON_GCP_PEER]

FLEET:
    --streams N        ADS streams [default: 1000]
    --clusters N       clusters, each with its load assignment [default: 1000]
    --mode M           sotw, delta or mixed (half each) [default: mixed]
    --types T          cds+eds, or cds alone (no per-name state) [default: cds+eds]
    --edits N          pushes measured (the median is reported) [default: 5]
    --stuck PERCENT    streams that stop reading once synced [default: 0]
    --storm            restart the server after the edits: every stream
                       reconnects at once
    --label TEXT       added to the JSON line

OUTPUT:
    A summary, then `json: {...}`: server, mode, streams, clusters,
    rss_before_kib, rss_synced_kib, rss_per_stream_kib, rss_after_edits_kib,
    sync_ms, sync_cpu_s, push_ms_median, push_cpu_ms_median,
    push_cpu_us_per_stream, push_ms, push_cpu_ms (every edit), client_cpu_s,
    and with --storm: storm_resync_ms, storm_peak_rss_kib, healthz_max_ms,
    healthz_over_100ms, healthz_probes.
";

#[derive(Clone)]
struct Args {
    server: PathBuf,
    peer: Option<PathBuf>,
    streams: usize,
    clusters: usize,
    edits: usize,
    mode: Mode,
    /// Clients subscribe to CDS only (no per-name state on the server).
    cds_only: bool,
    stuck_percent: f64,
    storm: bool,
    label: Option<String>,
}

/// Which protocol the fleet speaks.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Sotw,
    Delta,
    Mixed,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Sotw => "sotw",
            Mode::Delta => "delta",
            Mode::Mixed => "mixed",
        }
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn args() -> anyhow::Result<Option<Args>> {
    let mut a = Args {
        server: PathBuf::from("target/release/pylon-xds"),
        peer: None,
        streams: 1000,
        clusters: 1000,
        edits: 5,
        mode: Mode::Mixed,
        cds_only: false,
        stuck_percent: 0.0,
        storm: false,
        label: None,
    };
    let mut peer = None;
    let mut peer_bin = std::env::var_os("PYLON_GCP_PEER").map(PathBuf::from);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--help" | "-h" => return Ok(None),
            "--storm" => {
                a.storm = true;
                continue;
            }
            _ => {}
        }
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value (see --help)"))?;
        match flag.as_str() {
            "--server" => a.server = PathBuf::from(value),
            "--peer" => peer = Some(value),
            "--peer-bin" => peer_bin = Some(PathBuf::from(value)),
            "--streams" => a.streams = value.parse().context("--streams")?,
            "--clusters" => a.clusters = value.parse().context("--clusters")?,
            "--edits" => a.edits = value.parse().context("--edits")?,
            "--stuck" => a.stuck_percent = value.parse().context("--stuck")?,
            "--label" => a.label = Some(value),
            "--types" => {
                a.cds_only = match value.as_str() {
                    "cds" => true,
                    "cds+eds" => false,
                    _ => bail!("--types is cds or cds+eds"),
                }
            }
            "--mode" => {
                a.mode = match value.as_str() {
                    "sotw" => Mode::Sotw,
                    "delta" => Mode::Delta,
                    "mixed" => Mode::Mixed,
                    _ => bail!("--mode is sotw, delta or mixed"),
                }
            }
            _ => bail!("unknown flag {flag} (see --help)"),
        }
    }
    if a.storm && peer.is_some() {
        bail!("--storm measures pylon-xds's /healthz: not with --peer");
    }
    if a.streams < 2 || a.clusters == 0 || a.edits == 0 {
        bail!("--streams must be at least 2, --clusters and --edits at least 1");
    }
    if !(0.0..50.0).contains(&a.stuck_percent) {
        bail!("--stuck is a percentage below 50");
    }
    match peer.as_deref() {
        None => {}
        Some("go-control-plane") => {
            a.peer = Some(
                peer_bin
                    .unwrap_or_else(|| workspace().join("target/peers/go-control-plane/xds-peer")),
            )
        }
        Some(other) => bail!("--peer {other}: the only peer is go-control-plane"),
    }
    Ok(Some(a))
}

/// The YAML: `clusters` clusters with two endpoints each. `generation`
/// moves the first cluster's second endpoint (an EDS change), or with
/// `cds_only` changes its connect timeout (a CDS change).
fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field}"))
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS")
}

/// CPU time of each thread of `pid` (or of this process, `"self"`), in
/// nanoseconds, from `/proc/PID/task/TID/schedstat` (nanosecond resolution;
/// `/proc/PID/stat` counts 10 ms ticks, too coarse for one push).
fn thread_cpu(pid: &str) -> anyhow::Result<BTreeMap<u64, u64>> {
    let mut out = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?;
        let Ok(tid) = task.file_name().to_string_lossy().parse::<u64>() else {
            continue;
        };
        // A thread may end while we read: skip it.
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        if let Some(ns) = stat.split_whitespace().next().and_then(|v| v.parse().ok()) {
            out.insert(tid, ns);
        }
    }
    Ok(out)
}

/// CPU seconds the threads of `pid` spent since `before` was read (threads
/// that ended meanwhile are not counted).
fn cpu_since(pid: &str, before: &BTreeMap<u64, u64>) -> anyhow::Result<f64> {
    let now = thread_cpu(pid)?;
    let ns: u64 = now
        .iter()
        .map(|(tid, ns)| ns.saturating_sub(before.get(tid).copied().unwrap_or(0)))
        .sum();
    Ok(ns as f64 / 1e9)
}

// ---------------------------------------------------------------------------
// The server under test

/// pylon-xds, or the peer serving what `pylon-xds render` makes of the YAML.
struct Server {
    args: Args,
    dir: tempfile::TempDir,
    xds: SocketAddr,
    admin: SocketAddr,
    child: Option<Child>,
}

impl Server {
    fn name(&self) -> &'static str {
        if self.args.peer.is_some() {
            "go-control-plane"
        } else {
            "pylon-xds"
        }
    }

    fn yaml(&self) -> PathBuf {
        self.dir.path().join("pylon.yaml")
    }

    fn rendered(&self) -> PathBuf {
        self.dir.path().join("rendered.json")
    }

    fn start(args: &Args) -> anyhow::Result<Server> {
        let mut s = Server {
            args: args.clone(),
            dir: tempfile::tempdir()?,
            xds: free_addr()?,
            admin: free_addr()?,
            child: None,
        };
        if let Some(peer) = &args.peer {
            build_peer(peer)?;
        }
        s.write_config(0)?;
        s.spawn()?;
        Ok(s)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let child = match &self.args.peer {
            Some(peer) => Command::new(peer)
                .arg("-listen")
                .arg(self.xds.to_string())
                .arg("-resources")
                .arg(self.rendered())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("starting {}", peer.display()))?,
            None => Command::new(&self.args.server)
                .arg("serve")
                .arg("--config")
                .arg(self.yaml())
                .args(["--listen", &self.xds.to_string()])
                .args(["--admin", &self.admin.to_string()])
                .args(["--debounce-ms", "20", "--no-state"])
                .args(["--max-streams", &(self.args.streams + 1000).to_string()])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| format!("starting {}", self.args.server.display()))?,
        };
        self.child = Some(child);
        // Listening once it accepts.
        let by = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(self.xds).is_err() {
            if Instant::now() > by {
                bail!("{} does not listen on {}", self.name(), self.xds);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Writes generation `g` of the config. For the peer, the YAML is
    /// rendered first; the rename of the rendered file is the edit.
    fn write_config(&self, g: usize) -> anyhow::Result<Instant> {
        let yaml = config(self.args.clusters, g, self.args.cds_only);
        if self.args.peer.is_none() {
            let t = Instant::now();
            write_atomic(&self.yaml(), yaml.as_bytes())?;
            return Ok(t);
        }
        let source = self.dir.path().join(format!("render-{g}.yaml"));
        std::fs::write(&source, yaml)?;
        let out = Command::new(&self.args.server)
            .arg("render")
            .arg(&source)
            .output()
            .with_context(|| format!("running {} render", self.args.server.display()))?;
        if !out.status.success() {
            bail!("render: {}", String::from_utf8_lossy(&out.stderr));
        }
        let t = Instant::now();
        write_atomic(&self.rendered(), &out.stdout)?;
        Ok(t)
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Builds the peer with `go build` when it is missing or older than its
/// sources.
fn build_peer(bin: &Path) -> anyhow::Result<()> {
    let src = workspace().join("bench/peers/go-control-plane");
    let newest = ["main.go", "go.mod", "go.sum"]
        .iter()
        .filter_map(|f| std::fs::metadata(src.join(f)).ok()?.modified().ok())
        .max();
    let built = std::fs::metadata(bin).ok().and_then(|m| m.modified().ok());
    if let (Some(built), Some(newest)) = (built, newest) {
        if built >= newest {
            return Ok(());
        }
    }
    eprintln!("building {} with go build", bin.display());
    let status = Command::new("go")
        .arg("build")
        .arg("-o")
        .arg(bin)
        .arg(".")
        .current_dir(&src)
        .status()
        .context("running go build (is Go installed?)")?;
    if !status.success() {
        bail!("go build failed in {}", src.display());
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The fleet: a lean HTTP/2 gRPC client, so that 100,000 streams fit beside
// the server on two cores.

/// What a client reports to the driver.
enum Event {
    Synced,
    /// A new version of the last type arrived after the initial sync.
    Pushed,
    /// The stream reconnected and was answered again.
    Resynced,
    Failed(String),
}

/// The current connection of a [`Conn`]: how many were made before it, and
/// where to open streams while it is up.
type Current = (u64, Option<h2::client::SendRequest<Bytes>>);

/// One HTTP/2 connection, re-established when it breaks.
struct Conn {
    send: watch::Receiver<Current>,
}

fn connect(addr: SocketAddr, window: u32, stop: Arc<AtomicBool>) -> Conn {
    let (tx, rx) = watch::channel((0, None));
    tokio::spawn(async move {
        let mut made = 0;
        let mut backoff = Duration::from_millis(5);
        while !stop.load(Ordering::Relaxed) {
            let tcp = match tokio::net::TcpStream::connect(addr).await {
                Ok(t) => t,
                Err(_) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let handshake = h2::client::Builder::new()
                .initial_window_size(window)
                .initial_connection_window_size(16 << 20)
                .handshake::<_, Bytes>(tcp)
                .await;
            let Ok((send, conn)) = handshake else {
                tokio::time::sleep(backoff).await;
                continue;
            };
            backoff = Duration::from_millis(5);
            made += 1;
            let _ = tx.send((made, Some(send)));
            let _ = conn.await;
            let _ = tx.send((made, None));
        }
    });
    Conn { send: rx }
}

/// The protobuf `resource_names` entries of a SotW ACK, encoded once for
/// every client.
fn encoded_names(names: &[String]) -> Bytes {
    let req = DiscoveryRequest {
        resource_names: names.to_vec(),
        ..Default::default()
    };
    Bytes::from(req.encode_to_vec())
}

/// One gRPC message with its 5-byte header.
fn grpc_frame(parts: &[&[u8]]) -> Bytes {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut b = BytesMut::with_capacity(5 + len);
    b.put_u8(0);
    b.put_u32(len as u32);
    for p in parts {
        b.put_slice(p);
    }
    b.freeze()
}

/// The whole gRPC messages at the front of `buf`.
fn messages(buf: &mut BytesMut) -> Vec<Bytes> {
    let mut out = Vec::new();
    while buf.len() >= 5 {
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if buf.len() < 5 + len {
            break;
        }
        buf.advance(5);
        out.push(buf.split_to(len).freeze());
    }
    out
}

/// What a stream keeps across reconnects: what it holds.
#[derive(Default)]
struct Holding {
    /// SotW: the last version of each type.
    versions: BTreeMap<String, String>,
    /// Delta: name -> version per type.
    resources: BTreeMap<String, BTreeMap<String, String>>,
}

struct Fleet {
    names: Arc<Vec<String>>,
    sotw_names: Bytes,
    cds_only: bool,
}

/// One stream's life: opened on its connection, re-opened after a break.
async fn client(
    mut conn: watch::Receiver<Current>,
    i: usize,
    sotw: bool,
    stuck: bool,
    fleet: Arc<Fleet>,
    events: mpsc::UnboundedSender<Event>,
) {
    let mut holding = Holding::default();
    let mut synced_once = false;
    let mut used = 0;
    loop {
        // A connection other than the one the last stream broke on.
        let (made, send) = loop {
            let current = conn.borrow_and_update().clone();
            if let (made, Some(s)) = current {
                if made != used {
                    break (made, s);
                }
            }
            if conn.changed().await.is_err() {
                return;
            }
        };
        used = made;
        let r = stream(
            send,
            i,
            sotw,
            stuck,
            &fleet,
            &events,
            &mut holding,
            &mut synced_once,
        )
        .await;
        if let Err(e) = r {
            if !synced_once {
                let _ = events.send(Event::Failed(format!("stream {i}: {e:#}")));
                return;
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn stream(
    send: h2::client::SendRequest<Bytes>,
    i: usize,
    sotw: bool,
    stuck: bool,
    fleet: &Fleet,
    events: &mpsc::UnboundedSender<Event>,
    holding: &mut Holding,
    synced_once: &mut bool,
) -> anyhow::Result<()> {
    let method = if sotw {
        "StreamAggregatedResources"
    } else {
        "DeltaAggregatedResources"
    };
    let req = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://xds/envoy.service.discovery.v3.AggregatedDiscoveryService/{method}"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())?;
    let mut send = send.ready().await?;
    let (resp, mut tx) = send.send_request(req, false)?;
    let node = Some(Node {
        id: format!("fleet-{i}"),
        cluster: "fleet".into(),
        ..Default::default()
    });
    let reconnect = *synced_once;
    // The first requests: CDS, and after a reconnect EDS too, with what is held.
    if sotw {
        let cds = DiscoveryRequest {
            node,
            type_url: CLUSTER.into(),
            version_info: holding.versions.get(CLUSTER).cloned().unwrap_or_default(),
            ..Default::default()
        };
        tx.send_data(grpc_frame(&[&cds.encode_to_vec()]), false)?;
        if reconnect && !fleet.cds_only {
            let eds = DiscoveryRequest {
                type_url: ENDPOINT.into(),
                version_info: holding.versions.get(ENDPOINT).cloned().unwrap_or_default(),
                ..Default::default()
            };
            tx.send_data(
                grpc_frame(&[&eds.encode_to_vec(), &fleet.sotw_names]),
                false,
            )?;
        }
    } else {
        let initial = |ty: &str| holding.resources.get(ty).cloned().unwrap_or_default();
        let cds = DeltaDiscoveryRequest {
            node,
            type_url: CLUSTER.into(),
            initial_resource_versions: initial(CLUSTER).into_iter().collect(),
            ..Default::default()
        };
        tx.send_data(grpc_frame(&[&cds.encode_to_vec()]), false)?;
        if reconnect && !fleet.cds_only {
            let eds = DeltaDiscoveryRequest {
                type_url: ENDPOINT.into(),
                resource_names_subscribe: fleet.names.to_vec(),
                initial_resource_versions: initial(ENDPOINT).into_iter().collect(),
                ..Default::default()
            };
            tx.send_data(grpc_frame(&[&eds.encode_to_vec()]), false)?;
        }
    }
    let mut body = resp.await?.into_body();
    let mut buf = BytesMut::new();
    // The responses of the watched type seen on this stream.
    let mut seen = 0usize;
    let mut eds_held = 0usize;
    let mut cds_answered = false;
    let mut resynced = false;
    let watched = if fleet.cds_only { CLUSTER } else { ENDPOINT };
    loop {
        if stuck && *synced_once {
            // Stop reading: the server's window fills up.
            std::future::pending::<()>().await;
        }
        let Some(chunk) = body.data().await else {
            bail!("stream ended");
        };
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        buf.extend_from_slice(&chunk);
        for msg in messages(&mut buf) {
            let (type_url, count) = if sotw {
                let r = DiscoveryResponse::decode(msg)?;
                let ack = DiscoveryRequest {
                    type_url: r.type_url.clone(),
                    version_info: r.version_info.clone(),
                    response_nonce: r.nonce.clone(),
                    ..Default::default()
                };
                let names: &[u8] = if r.type_url == ENDPOINT {
                    &fleet.sotw_names
                } else {
                    &[]
                };
                tx.send_data(grpc_frame(&[&ack.encode_to_vec(), names]), false)?;
                holding
                    .versions
                    .insert(r.type_url.clone(), r.version_info.clone());
                if r.type_url == CLUSTER
                    && !fleet.cds_only
                    && !reconnect
                    && seen == 0
                    && !cds_answered
                {
                    let eds = DiscoveryRequest {
                        type_url: ENDPOINT.into(),
                        ..Default::default()
                    };
                    tx.send_data(
                        grpc_frame(&[&eds.encode_to_vec(), &fleet.sotw_names]),
                        false,
                    )?;
                }
                (r.type_url, r.resources.len())
            } else {
                let r = DeltaDiscoveryResponse::decode(msg)?;
                let ack = DeltaDiscoveryRequest {
                    type_url: r.type_url.clone(),
                    response_nonce: r.nonce.clone(),
                    ..Default::default()
                };
                tx.send_data(grpc_frame(&[&ack.encode_to_vec()]), false)?;
                let held = holding.resources.entry(r.type_url.clone()).or_default();
                for res in &r.resources {
                    held.insert(res.name.clone(), res.version.clone());
                }
                for gone in &r.removed_resources {
                    held.remove(gone);
                }
                if r.type_url == CLUSTER
                    && !fleet.cds_only
                    && !reconnect
                    && seen == 0
                    && !cds_answered
                {
                    let eds = DeltaDiscoveryRequest {
                        type_url: ENDPOINT.into(),
                        resource_names_subscribe: fleet.names.to_vec(),
                        ..Default::default()
                    };
                    tx.send_data(grpc_frame(&[&eds.encode_to_vec()]), false)?;
                }
                (r.type_url, r.resources.len())
            };
            if type_url == CLUSTER {
                cds_answered = true;
            }
            if reconnect {
                // Answered again: CDS, and for SotW its EDS too.
                let done = cds_answered && (!sotw || fleet.cds_only || (type_url == ENDPOINT));
                if done && !resynced {
                    resynced = true;
                    let _ = events.send(Event::Resynced);
                }
                continue;
            }
            if type_url != watched {
                continue;
            }
            if !*synced_once {
                eds_held += count;
                let want = if fleet.cds_only { 0 } else { fleet.names.len() };
                if !fleet.cds_only && eds_held < want {
                    if sotw {
                        bail!("stream {i}: EDS with {count} of {want}");
                    }
                    continue;
                }
                *synced_once = true;
                seen += 1;
                let _ = events.send(Event::Synced);
            } else {
                if count == 0 {
                    bail!("stream {i}: an empty push");
                }
                seen += 1;
                let _ = events.send(Event::Pushed);
            }
        }
    }
}

/// Waits for `n` events of the wanted kind.
async fn wait_for(
    rx: &mut mpsc::UnboundedReceiver<Event>,
    n: usize,
    want: fn(&Event) -> bool,
) -> anyhow::Result<()> {
    let mut got = 0;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while got < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => bail!("{got} of {n} streams after {DEADLINE:?}"),
            Ok(None) => bail!("every client ended"),
            Ok(Some(Event::Failed(e))) => bail!("client failed: {e}"),
            Ok(Some(e)) if want(&e) => got += 1,
            // A stuck stream's late pushes, or the resync of a stream that
            // broke during a push: not what is counted now.
            Ok(Some(_)) => {}
        }
    }
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Probes `GET /healthz` every 20 ms on a thread of its own until `stop`:
/// (latencies in ms, failures).
fn probe_healthz(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(Vec<f64>, usize)> {
    std::thread::spawn(move || {
        let mut latencies = Vec::new();
        let mut failures = 0;
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            let ok = (|| -> std::io::Result<bool> {
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                s.write_all(
                    b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                )?;
                let mut out = String::new();
                s.read_to_string(&mut out)?;
                Ok(out.starts_with("HTTP/1.1 200"))
            })();
            match ok {
                Ok(true) => latencies.push(t.elapsed().as_secs_f64() * 1e3),
                _ => failures += 1,
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (latencies, failures)
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Some(a) = args()? else {
        print!("{HELP}");
        return Ok(());
    };
    let mut server = Server::start(&a)?;
    let pid = server.pid();
    let stop = Arc::new(AtomicBool::new(false));
    let stuck_streams = ((a.streams as f64) * a.stuck_percent / 100.0).round() as usize;
    let normal = a.streams - stuck_streams;
    let mut conns = Vec::new();
    for _ in 0..normal.div_ceil(STREAMS_PER_CONN) {
        conns.push(connect(server.xds, 1 << 20, Arc::clone(&stop)));
    }
    let first_stuck_conn = conns.len();
    for _ in 0..stuck_streams.div_ceil(STREAMS_PER_CONN) {
        conns.push(connect(server.xds, STUCK_WINDOW, Arc::clone(&stop)));
    }
    let names: Vec<String> = (0..a.clusters).map(|i| format!("c-{i}")).collect();
    let fleet = Arc::new(Fleet {
        sotw_names: encoded_names(&names),
        names: Arc::new(names),
        cds_only: a.cds_only,
    });

    // Let the server settle, then measure.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss0 = rss_kib(pid)?;
    let spid = pid.to_string();
    let cpu0 = thread_cpu(&spid)?;
    let client_cpu0 = thread_cpu("self")?;
    let started = Instant::now();
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    for i in 0..a.streams {
        let stuck = i >= normal;
        let conn = if stuck {
            &conns[first_stuck_conn + (i - normal) / STREAMS_PER_CONN]
        } else {
            &conns[i / STREAMS_PER_CONN]
        };
        let use_sotw = match a.mode {
            Mode::Sotw => true,
            Mode::Delta => false,
            Mode::Mixed => i % 2 == 0,
        };
        tokio::spawn(client(
            conn.send.clone(),
            i,
            use_sotw,
            stuck,
            Arc::clone(&fleet),
            ev_tx.clone(),
        ));
    }
    wait_for(&mut ev_rx, a.streams, |e| matches!(e, Event::Synced)).await?;
    let sync = started.elapsed();
    let sync_cpu = cpu_since(&spid, &cpu0)?;
    // ACKs are in flight just after the last response: let them land.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss1 = rss_kib(pid)?;

    let mut pushes = Vec::new();
    let mut push_cpu = Vec::new();
    for generation in 1..=a.edits {
        let cpu = thread_cpu(&spid)?;
        let t = server.write_config(generation)?;
        wait_for(&mut ev_rx, normal, |e| matches!(e, Event::Pushed)).await?;
        pushes.push(t.elapsed().as_secs_f64() * 1e3);
        push_cpu.push(cpu_since(&spid, &cpu)? * 1e3);
        // Let the ACKs land before the next edit.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rss2 = rss_kib(pid)?;

    let mut storm = None;
    if a.storm {
        let probe_stop = Arc::new(AtomicBool::new(false));
        let probe =
            (a.peer.is_none()).then(|| probe_healthz(server.admin, Arc::clone(&probe_stop)));
        server.stop();
        let t = Instant::now();
        server.spawn()?;
        let resync = wait_for(&mut ev_rx, a.streams, |e| matches!(e, Event::Resynced)).await;
        let resync_ms = t.elapsed().as_secs_f64() * 1e3;
        let peak = status_kib(server.pid(), "VmHWM")?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        probe_stop.store(true, Ordering::Relaxed);
        let probed = probe.map(|p| p.join().unwrap_or_default());
        resync?;
        storm = Some((resync_ms, peak, probed));
    }
    let client_cpu = cpu_since("self", &client_cpu0)?;
    stop.store(true, Ordering::Relaxed);
    let server_name = server.name();
    drop(server);

    let per_stream = (rss1.saturating_sub(rss0)) as f64 / a.streams as f64;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{server_name}: {} streams ({}{}) x {} clusters + {} load assignments",
        a.streams,
        a.mode.name(),
        if a.cds_only { ", CDS only" } else { "" },
        a.clusters,
        a.clusters
    )?;
    writeln!(
        out,
        "server RSS before fleet:     {:.1} MiB",
        rss0 as f64 / 1024.0
    )?;
    writeln!(
        out,
        "server RSS after sync:       {:.1} MiB ({per_stream:.1} KiB per stream)",
        rss1 as f64 / 1024.0
    )?;
    writeln!(
        out,
        "server RSS after {} edits:    {:.1} MiB",
        a.edits,
        rss2 as f64 / 1024.0
    )?;
    writeln!(
        out,
        "sync of the whole fleet:     {:.0} ms wall, {:.2} s server CPU",
        sync.as_secs_f64() * 1e3,
        sync_cpu
    )?;
    writeln!(
        out,
        "push to {} streams:     median {:.0} ms wall (of {}), {:.0} ms server CPU ({:.1} us per stream)",
        normal,
        median(&pushes),
        a.edits,
        median(&push_cpu),
        median(&push_cpu) * 1e3 / normal as f64
    )?;
    let mut summary = serde_json::json!({
        "server": server_name,
        "mode": a.mode.name(),
        "types": if a.cds_only { "cds" } else { "cds+eds" },
        "streams": a.streams,
        "stuck": stuck_streams,
        "clusters": a.clusters,
        "rss_before_kib": rss0,
        "rss_synced_kib": rss1,
        "rss_per_stream_kib": per_stream,
        "rss_after_edits_kib": rss2,
        "sync_ms": sync.as_secs_f64() * 1e3,
        "sync_cpu_s": sync_cpu,
        "push_ms_median": median(&pushes),
        "push_cpu_ms_median": median(&push_cpu),
        "push_cpu_us_per_stream": median(&push_cpu) * 1e3 / normal as f64,
        "push_ms": pushes,
        "push_cpu_ms": push_cpu,
        "client_cpu_s": client_cpu,
    });
    if let Some(label) = &a.label {
        summary["label"] = label.clone().into();
    }
    if let Some((resync_ms, peak, probed)) = storm {
        writeln!(
            out,
            "reconnect storm:             every stream answered again {resync_ms:.0} ms after the restart; peak RSS {:.1} MiB",
            peak as f64 / 1024.0
        )?;
        summary["storm_resync_ms"] = resync_ms.into();
        summary["storm_peak_rss_kib"] = peak.into();
        if let Some((lat, failures)) = probed {
            let max = lat.iter().copied().fold(0.0, f64::max);
            let over = lat
                .iter()
                .filter(|l| **l > HEALTHZ_BOUND.as_secs_f64() * 1e3)
                .count();
            writeln!(
                out,
                "/healthz during the storm:   {} probes, slowest {max:.1} ms, {over} over 100 ms, {failures} failed",
                lat.len() + failures
            )?;
            summary["healthz_max_ms"] = max.into();
            summary["healthz_over_100ms"] = (over + failures).into();
            summary["healthz_probes"] = (lat.len() + failures).into();
        }
    }
    writeln!(out, "json: {summary}")?;
    Ok(())
}
