//! Control-plane fan-out benchmark: one `pylon-xds serve` process, a fleet of
//! scripted ADS clients on loopback (`--mode mixed`: half state-of-the-world,
//! half delta; or all `sotw` or all `delta`).
//!
//! Each client behaves like Envoy on CDS + EDS: a CDS wildcard request, then
//! EDS for every cluster name, ACKing each response (`--types cds`: CDS only,
//! so the server keeps no per-name state). Measured:
//!
//! - **sync**: wall time until every stream holds CDS and EDS;
//! - **RSS per stream**: the server's VmRSS after the fleet synced minus before
//!   it connected, divided by the number of streams;
//! - **server CPU** spent on the sync (utime + stime from `/proc`);
//! - **push**: the YAML is edited (one cluster's endpoint moves; with
//!   `--types cds`, its connect timeout); wall time from the rename until
//!   every stream received the new response, and server CPU. This includes
//!   the server's debounce (20 ms here) and the reload.
//!
//! Usage (release builds; figures in BENCHMARKS.md):
//!
//! ```text
//! cargo build --release -p control-plane --bin pylon-xds --example xds-fleet
//! target/release/examples/xds-fleet --server target/release/pylon-xds \
//!     --streams 1000 --clusters 1000 --edits 3 --mode sotw [--types cds]
//! ```

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

const CLUSTER: &str = pylon::type_url::CLUSTER;
const ENDPOINT: &str = pylon::type_url::ENDPOINT;
/// Streams per HTTP/2 connection (the server allows 1,024).
const STREAMS_PER_CONN: usize = 500;
/// How long any phase may take before the run is declared failed.
const DEADLINE: Duration = Duration::from_secs(120);

struct Args {
    server: PathBuf,
    streams: usize,
    clusters: usize,
    edits: usize,
    mode: Mode,
    /// Clients subscribe to CDS only (no per-name state on the server).
    cds_only: bool,
}

/// Which protocol the fleet speaks.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Sotw,
    Delta,
    Mixed,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        server: PathBuf::from("target/release/pylon-xds"),
        streams: 1000,
        clusters: 1000,
        edits: 5,
        mode: Mode::Mixed,
        cds_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--server" => a.server = PathBuf::from(value),
            "--streams" => a.streams = value.parse().context("--streams")?,
            "--clusters" => a.clusters = value.parse().context("--clusters")?,
            "--edits" => a.edits = value.parse().context("--edits")?,
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
            _ => bail!(
                "unknown flag {flag}; flags: --server --streams --clusters --edits --mode --types"
            ),
        }
    }
    if a.streams < 2 || a.clusters == 0 || a.edits == 0 {
        bail!("--streams must be at least 2, --clusters and --edits at least 1");
    }
    Ok(a)
}

/// The YAML: `clusters` clusters with two endpoints each. `generation`
/// moves the first cluster's second endpoint (an EDS change), or with
/// `cds_only` changes its connect timeout (a CDS change).
fn config(clusters: usize, generation: usize, cds_only: bool) -> String {
    let mut s = String::from("clusters:\n");
    for i in 0..clusters {
        let port = if i == 0 && !cds_only {
            20000 + generation
        } else {
            30000 + i % 30000
        };
        s.push_str(&format!(
            "  - name: c-{i}\n    endpoints: [127.0.0.1:{}, 127.0.0.2:{port}]\n",
            10000 + i % 10000
        ));
        if i == 0 && cds_only {
            s.push_str(&format!("    connect_timeout: {}s\n", 1 + generation));
        }
    }
    s
}

fn write_config(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// VmRSS of `pid`, in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').context("bad /proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 =
        f.get(11).context("utime")?.parse::<f64>()? + f.get(12).context("stime")?.parse::<f64>()?;
    Ok(ticks / 100.0)
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a client reports to the driver.
enum Event {
    Synced,
    /// A new version of the last type arrived after the initial sync.
    Pushed,
    Failed(String),
}

/// Counts the responses of the type a client watches: the first is the
/// sync, every later one a push.
struct Progress {
    seen: usize,
    events: mpsc::UnboundedSender<Event>,
}

impl Progress {
    fn arrived(&mut self) {
        self.seen += 1;
        let _ = self.events.send(if self.seen == 1 {
            Event::Synced
        } else {
            Event::Pushed
        });
    }
}

fn node(i: usize) -> Option<Node> {
    Some(Node {
        id: format!("fleet-{i}"),
        cluster: "fleet".into(),
        ..Default::default()
    })
}

/// A state-of-the-world client: CDS wildcard, then (unless `cds_only`) EDS
/// for every name. Reports the first and every later version of the last type.
async fn sotw(
    ch: Channel,
    i: usize,
    (names, cds_only): (Arc<Vec<String>>, bool),
    events: mpsc::UnboundedSender<Event>,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel(4);
    let mut client = AggregatedDiscoveryServiceClient::new(ch);
    tx.send(DiscoveryRequest {
        node: node(i),
        type_url: CLUSTER.into(),
        ..Default::default()
    })
    .await?;
    let mut stream = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut progress = Progress { seen: 0, events };
    while let Some(r) = stream.next().await {
        let r = r?;
        let mut ack = DiscoveryRequest {
            type_url: r.type_url.clone(),
            version_info: r.version_info.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        };
        if r.type_url == ENDPOINT {
            ack.resource_names = names.to_vec();
        }
        tx.send(ack).await?;
        if r.type_url == CLUSTER && cds_only {
            progress.arrived();
        } else if r.type_url == CLUSTER && progress.seen == 0 {
            tx.send(DiscoveryRequest {
                type_url: ENDPOINT.into(),
                resource_names: names.to_vec(),
                ..Default::default()
            })
            .await?;
        } else if r.type_url == ENDPOINT {
            if r.resources.len() != names.len() {
                bail!(
                    "sotw {i}: EDS with {} of {}",
                    r.resources.len(),
                    names.len()
                );
            }
            progress.arrived();
        }
    }
    Ok(())
}

/// A delta client: CDS wildcard, then (unless `cds_only`) EDS for every
/// name. Reports the first and every later response of the last type.
async fn delta(
    ch: Channel,
    i: usize,
    (names, cds_only): (Arc<Vec<String>>, bool),
    events: mpsc::UnboundedSender<Event>,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel(4);
    let mut client = AggregatedDiscoveryServiceClient::new(ch);
    tx.send(DeltaDiscoveryRequest {
        node: node(i),
        type_url: CLUSTER.into(),
        ..Default::default()
    })
    .await?;
    let mut stream = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut eds_held = 0;
    let mut progress = Progress { seen: 0, events };
    while let Some(r) = stream.next().await {
        let r = r?;
        tx.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        })
        .await?;
        if r.type_url == CLUSTER && cds_only {
            progress.arrived();
        } else if r.type_url == CLUSTER && progress.seen == 0 && eds_held == 0 {
            tx.send(DeltaDiscoveryRequest {
                type_url: ENDPOINT.into(),
                resource_names_subscribe: names.to_vec(),
                ..Default::default()
            })
            .await?;
        } else if r.type_url == ENDPOINT {
            eds_held += r.resources.len();
            if progress.seen == 0 && eds_held != names.len() {
                bail!("delta {i}: EDS with {eds_held} of {}", names.len());
            }
            progress.arrived();
        }
    }
    Ok(())
}

/// Waits for `n` events of the wanted kind.
async fn wait_for(
    rx: &mut mpsc::UnboundedReceiver<Event>,
    n: usize,
    synced: bool,
) -> anyhow::Result<()> {
    let mut got = 0;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while got < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => bail!("{got} of {n} streams after {DEADLINE:?}"),
            Ok(None) => bail!("every client ended"),
            Ok(Some(Event::Failed(e))) => bail!("client failed: {e}"),
            Ok(Some(Event::Synced)) if synced => got += 1,
            Ok(Some(Event::Pushed)) if !synced => got += 1,
            Ok(Some(_)) => bail!("unexpected event order"),
        }
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("pylon.yaml");
    write_config(&cfg, &config(a.clusters, 0, a.cds_only))?;
    let (xds, admin) = (free_addr()?, free_addr()?);
    let child = Command::new(&a.server)
        .arg("serve")
        .arg("--config")
        .arg(&cfg)
        .args(["--listen", &xds.to_string(), "--admin", &admin.to_string()])
        .args(["--debounce-ms", "20"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", a.server.display()))?;
    let server = Server(child);
    let pid = server.0.id();

    let endpoint = Endpoint::from_shared(format!("http://{xds}"))?;
    let connect_by = Instant::now() + Duration::from_secs(15);
    let first = loop {
        match endpoint.connect().await {
            Ok(c) => break c,
            Err(e) if Instant::now() > connect_by => bail!("connecting to {xds}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let mut channels = vec![first];
    for _ in 1..a.streams.div_ceil(STREAMS_PER_CONN) {
        channels.push(endpoint.connect().await?);
    }
    let names: Arc<Vec<String>> = Arc::new((0..a.clusters).map(|i| format!("c-{i}")).collect());

    // Let the server settle, then measure.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss0 = rss_kib(pid)?;
    let cpu0 = cpu_seconds(pid)?;
    let started = Instant::now();
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    for i in 0..a.streams {
        let ch = channels[i / STREAMS_PER_CONN].clone();
        let (names, ev, mode, cds_only) = (Arc::clone(&names), ev_tx.clone(), a.mode, a.cds_only);
        tokio::spawn(async move {
            let use_sotw = match mode {
                Mode::Sotw => true,
                Mode::Delta => false,
                Mode::Mixed => i % 2 == 0,
            };
            let r = if use_sotw {
                sotw(ch, i, (names, cds_only), ev.clone()).await
            } else {
                delta(ch, i, (names, cds_only), ev.clone()).await
            };
            if let Err(e) = r {
                let _ = ev.send(Event::Failed(format!("{e:#}")));
            }
        });
    }
    wait_for(&mut ev_rx, a.streams, true).await?;
    let sync = started.elapsed();
    let sync_cpu = cpu_seconds(pid)? - cpu0;
    // ACKs are in flight just after the last response: let them land.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss1 = rss_kib(pid)?;

    let mut pushes = Vec::new();
    let mut push_cpu = Vec::new();
    for generation in 1..=a.edits {
        let cpu = cpu_seconds(pid)?;
        let t = Instant::now();
        write_config(&cfg, &config(a.clusters, generation, a.cds_only))?;
        wait_for(&mut ev_rx, a.streams, false).await?;
        pushes.push(t.elapsed().as_secs_f64() * 1e3);
        push_cpu.push((cpu_seconds(pid)? - cpu) * 1e3);
    }
    let rss2 = rss_kib(pid)?;
    drop(server);

    let per_stream = (rss1.saturating_sub(rss0)) as f64 / a.streams as f64;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "streams {} ({}) x {} clusters + {} load assignments",
        a.streams,
        match a.mode {
            Mode::Sotw => "SotW",
            Mode::Delta => "delta",
            Mode::Mixed => "half SotW, half delta",
        },
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
        "push to the whole fleet:     median {:.0} ms wall (of {}), {:.0} ms server CPU",
        median(&mut pushes),
        a.edits,
        median(&mut push_cpu)
    )?;
    let summary: HashMap<&str, f64> = [
        ("streams", a.streams as f64),
        ("clusters", a.clusters as f64),
        ("rss_before_kib", rss0 as f64),
        ("rss_synced_kib", rss1 as f64),
        ("rss_per_stream_kib", per_stream),
        ("sync_ms", sync.as_secs_f64() * 1e3),
        ("sync_cpu_s", sync_cpu),
        ("push_ms_median", median(&mut pushes)),
        ("push_cpu_ms_median", median(&mut push_cpu)),
    ]
    .into_iter()
    .collect();
    writeln!(out, "json: {}", serde_json::to_string(&summary)?)?;
    Ok(())
}
