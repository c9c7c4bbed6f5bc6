//! `pylon-proxy`: the command line. Reads the bootstrap or flags into an
//! [`app::Plan`] and runs it with [`app::serve`] until SIGTERM or SIGINT;
//! running the proxy (static resources, xDS, admin, drain order) is `app`'s.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use data_plane::app::{self, Plan};
use data_plane::bootstrap;
use data_plane::xds::{self, XdsOptions};
use tracing::info;

/// jemalloc rather than the system allocator: it returns the pages of freed
/// memory to the system shortly after, where glibc keeps them in its arenas,
/// so the memory a burst of connections (a slowloris wave, say) held goes
/// back once they are closed instead of staying at the peak.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Envoy's default admin address.
const DEFAULT_ADMIN: &str = "127.0.0.1:9901";

#[derive(Parser, Debug)]
#[command(
    name = "pylon-proxy",
    version,
    about = "A small Envoy-compatible proxy configured over ADS",
    long_about = "Runs from an Envoy bootstrap (-c), reading node, admin, dynamic_resources (ADS) and \
static_resources, or from flags (--xds and --node-id). Delta ADS is the default over flags: a change \
sends only the changed resources and a reconnect resends only what differs."
)]
struct Cli {
    /// An Envoy bootstrap (the subset pylon-proxy supports; anything else is an error).
    #[arg(short = 'c', long = "config-path")]
    config: Option<PathBuf>,
    /// The ADS server (pylon-xds), when not given by a bootstrap: HOST:PORT,
    /// a host name or an IP address; several replicas separated by commas,
    /// tried in turn when the stream breaks.
    #[arg(long, value_name = "HOST:PORT[,HOST:PORT...]", value_delimiter = ',')]
    xds: Vec<String>,
    /// TLS to the ADS server: the CA its certificate must chain to (PEM).
    /// Overrides the bootstrap's `transport_socket`; reloaded on change.
    #[arg(long, value_name = "FILE")]
    xds_ca: Option<PathBuf>,
    /// Mutual TLS: the client certificate presented to the ADS server.
    #[arg(long, requires = "xds_key", requires = "xds_ca", value_name = "FILE")]
    xds_cert: Option<PathBuf>,
    /// The private key of --xds-cert.
    #[arg(long, requires = "xds_cert", value_name = "FILE")]
    xds_key: Option<PathBuf>,
    /// The name the ADS server's certificate must carry (default: the host
    /// of --xds).
    #[arg(long, value_name = "NAME")]
    xds_sni: Option<String>,
    /// Node id presented to the control plane (overrides the bootstrap's).
    #[arg(long, visible_alias = "service-node")]
    node_id: Option<String>,
    /// Node cluster presented to the control plane (overrides the bootstrap's).
    #[arg(long, visible_alias = "service-cluster")]
    node_cluster: Option<String>,
    /// Admin address, HOST:PORT (overrides the bootstrap's; default 127.0.0.1:9901).
    #[arg(long, value_name = "HOST:PORT")]
    admin: Option<String>,
    /// Worker threads (default: one per core).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Log level, as Envoy spells it: trace, debug, info, warning (warn),
    /// error, critical or off. `RUST_LOG`, when set, takes precedence.
    #[arg(short = 'l', long, value_parser = parse_log_level, default_value = "info")]
    log_level: String,
    /// How long listeners drain on shutdown and when replaced, in seconds
    /// (Envoy's --drain-time-s).
    #[arg(long, value_name = "SECONDS")]
    drain_time_s: Option<u64>,
    /// Envoy's hot-restart shared-memory id: accepted and ignored
    /// (pylon-proxy has no hot restart; start a second process on another
    /// address instead).
    #[arg(long, value_name = "N")]
    base_id: Option<u64>,
    /// ADS flavour over flags, or to override the bootstrap's api_type.
    #[arg(long, value_enum)]
    ads: Option<AdsMode>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// Envoy's log level names, as `tracing` filter directives.
fn parse_log_level(level: &str) -> Result<String, String> {
    Ok(match level {
        "trace" | "debug" | "info" | "error" | "off" => level,
        "warning" | "warn" => "warn",
        // tracing has nothing above error.
        "critical" => "error",
        other => {
            return Err(format!(
                "unknown log level `{other}`: trace, debug, info, warning, error, critical or off"
            ))
        }
    }
    .to_string())
}

/// Resolves HOST:PORT (a host name, an IPv4 literal or `[IPv6]`), taking the
/// first address the system resolver gives.
fn resolve(flag: &str, value: &str) -> anyhow::Result<SocketAddr> {
    use std::net::ToSocketAddrs as _;
    let mut addrs = value
        .to_socket_addrs()
        .with_context(|| format!("--{flag} {value}: expected HOST:PORT"))?;
    addrs
        .next()
        .with_context(|| format!("--{flag} {value}: the name resolves to no address"))
}

#[derive(Copy, Clone, Debug, ValueEnum, PartialEq, Eq)]
enum AdsMode {
    /// Incremental xDS (the default).
    Delta,
    /// State of the world.
    Sotw,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.len() == 3 && args[1] == PARSE_BOOTSTRAP {
        return parse_bootstrap_child(&args[2]);
    }
    let cli = Cli::parse();
    pylon::logging::init_at(matches!(cli.log_format, LogFormat::Json), &cli.log_level);
    pylon::limits::raise_nofile();
    if let Some(id) = cli.base_id {
        info!(
            base_id = id,
            "--base-id accepted and ignored: pylon-proxy has no hot restart"
        );
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pylon-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves the bootstrap and the flags into what the process runs.
fn plan(cli: Cli) -> anyhow::Result<Plan> {
    let boot = match &cli.config {
        Some(path) => Some(load_bootstrap(path.clone())?),
        None => None,
    };
    let node_id = cli
        .node_id
        .or_else(|| {
            boot.as_ref()
                .map(|b| b.node_id.clone())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_default();
    let node_cluster = cli
        .node_cluster
        .or_else(|| {
            boot.as_ref()
                .map(|b| b.node_cluster.clone())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "pylon-proxy".to_string());
    let admin = match (&cli.admin, boot.as_ref().and_then(|b| b.admin)) {
        (Some(a), _) => resolve("admin", a)?,
        (None, Some(a)) => a,
        (None, None) => DEFAULT_ADMIN.parse()?,
    };
    // A typo in --xds fails now; names are resolved again at each connect.
    for x in &cli.xds {
        resolve("xds", x)?;
    }
    let boot_xds = boot.as_ref().and_then(|b| b.xds.clone());
    let target = match (cli.xds.is_empty(), &boot_xds) {
        (false, from_boot) => Some((cli.xds.clone(), from_boot.as_ref().is_none_or(|b| b.delta))),
        (true, Some(t)) => Some((
            t.endpoints.iter().map(|e| e.target()).collect::<Vec<_>>(),
            t.delta,
        )),
        (true, None) => None,
    };
    let tls_files = match (&cli.xds_ca, boot_xds.as_ref().and_then(|b| b.tls.clone())) {
        (Some(ca), _) => Some(bootstrap::XdsTls {
            ca: ca.clone(),
            cert_key: cli.xds_cert.clone().zip(cli.xds_key.clone()),
            server_name: None,
        }),
        (None, from_boot) => from_boot,
    };
    let xds = match target {
        Some((targets, delta)) => {
            anyhow::ensure!(
                !node_id.is_empty(),
                "a node id is needed to talk to the control plane: --node-id or node.id in the bootstrap"
            );
            let delta = match cli.ads {
                Some(mode) => mode == AdsMode::Delta,
                None => delta,
            };
            let tls = match tls_files {
                None => None,
                Some(files) => {
                    let client = pylon::tls::ClientTls::load(
                        files.ca.clone(),
                        files.cert_key.clone(),
                        &[b"h2"],
                    )
                    .context("TLS to the xDS server")?;
                    // Without a name, each server's own host is checked.
                    let server_name = cli.xds_sni.clone().or(files.server_name);
                    Some(xds::XdsTls {
                        client,
                        server_name,
                    })
                }
            };
            Some(XdsOptions {
                targets,
                tls,
                node: xds::node(&node_id, &node_cluster),
                delta,
            })
        }
        None => None,
    };
    let (clusters, listeners) = match boot {
        Some(b) => (b.clusters, b.listeners),
        None => (Vec::new(), Vec::new()),
    };
    anyhow::ensure!(
        xds.is_some() || !listeners.is_empty(),
        "nothing to run: give --xds ADDR --node-id ID, or -c with a bootstrap that has dynamic_resources or static listeners"
    );
    let concurrency = cli
        .concurrency
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    Ok(Plan {
        node_id,
        node_cluster,
        admin,
        xds,
        clusters,
        listeners,
        concurrency,
        drain_time: cli.drain_time_s.map(std::time::Duration::from_secs),
    })
}

/// The hidden argument that makes pylon-proxy a bootstrap parser: it prints
/// the parsed bootstrap as JSON on stdout (or the error on stderr) and exits.
const PARSE_BOOTSTRAP: &str = "--internal-parse-bootstrap";

/// Reads the bootstrap in a short-lived child process.
///
/// Parsing Envoy YAML needs Envoy's descriptor pool: about 10 MB of small
/// allocations that malloc keeps as fragmented heap after they are freed.
/// Parsing in a child keeps them out of the long-lived proxy, whose idle RSS
/// stays that much lower. The child is this same binary.
fn load_bootstrap(path: PathBuf) -> anyhow::Result<bootstrap::Bootstrap> {
    let exe = std::env::current_exe().context("locating pylon-proxy's own binary")?;
    let out = std::process::Command::new(exe)
        .arg(PARSE_BOOTSTRAP)
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .output()
        .context("running the bootstrap parser")?;
    if !out.status.success() {
        anyhow::bail!("{}", String::from_utf8_lossy(&out.stderr).trim_end());
    }
    serde_json::from_slice(&out.stdout).context("reading the parsed bootstrap")
}

/// The child side of [`load_bootstrap`].
fn parse_bootstrap_child(path: &std::ffi::OsStr) -> ExitCode {
    match bootstrap::load(std::path::Path::new(path)) {
        Ok(b) => match serde_json::to_writer(std::io::stdout().lock(), &b) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            // The error's text already names its cause.
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let plan = plan(cli)?;
    // One worker: a single-threaded runtime, which runs ready connections in
    // the order they became ready. The work-stealing scheduler's last-woken-
    // first slot let some connections wait several turns: with 1,000
    // connections its p99 was 53-91 ms against 16-19 ms here (BENCHMARKS.md).
    let rt = if plan.concurrency == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(plan.concurrency)
            .enable_all()
            .build()?
    };
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let signalled = async move {
            tokio::select! {
                _ = term.recv() => info!("SIGTERM: draining"),
                _ = int.recv() => info!("SIGINT: draining"),
            }
        };
        app::serve(plan, signalled).await
    })
}
