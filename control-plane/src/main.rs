//! `pylon-xds`: the command line. Parses arguments, sets up logging and
//! signals, and calls into the library; no protocol or config logic lives here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use control_plane::bootstrap::{envoy_bootstrap, BootstrapOptions};
use control_plane::config::Limits;
use control_plane::etcd::cli::CliError;
use control_plane::etcd::{Etcd, EtcdOptions, EtcdTls, EtcdUrl};
use control_plane::snapshot::ResourceType;
use control_plane::{app, source, ServeOptions};

#[derive(Parser, Debug)]
#[command(
    name = "pylon-xds",
    version,
    about = "A YAML source of truth served to Envoy over xDS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the config over ADS (SotW and delta) and the standalone xDS services.
    Serve {
        /// The YAML source of truth (watched; SIGHUP also reloads).
        #[arg(
            long,
            short = 'c',
            required_unless_present = "etcd",
            conflicts_with = "etcd"
        )]
        config: Option<PathBuf>,
        /// The source of truth in etcd instead of a file (watched):
        /// etcd://HOST:PORT[,HOST:PORT...]/KEY.
        #[arg(long, value_name = "URL")]
        etcd: Option<EtcdUrl>,
        #[command(flatten)]
        etcd_tls: EtcdTlsArgs,
        /// With --etcd: where the last good revision from etcd is cached,
        /// served at start-up when etcd is unreachable or holds an invalid
        /// revision [default: the state directory].
        #[arg(
            long,
            requires = "etcd",
            conflicts_with = "no_state",
            value_name = "DIR"
        )]
        cache_dir: Option<PathBuf>,
        /// gRPC (xDS) listen address.
        #[arg(long, default_value = app::DEFAULT_XDS)]
        listen: SocketAddr,
        /// Admin HTTP listen address (/healthz /readyz /metrics /nodes /status).
        #[arg(long, default_value = app::DEFAULT_ADMIN)]
        admin: SocketAddr,
        /// Quiet period after the last file change before reloading, in milliseconds.
        #[arg(long, default_value_t = 100)]
        debounce_ms: u64,
        /// Where the last good revision of the config is kept, served at
        /// start-up if the file is invalid [default: $STATE_DIRECTORY, else
        /// $XDG_STATE_HOME/pylon-xds, else ~/.local/state/pylon-xds].
        #[arg(long, conflicts_with = "no_state")]
        state_dir: Option<PathBuf>,
        /// Keep no last good revision: an invalid file at start-up is fatal.
        #[arg(long)]
        no_state: bool,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        tls: TlsArgs,
        /// xDS streams served at once; a stream beyond is refused with UNAVAILABLE.
        #[arg(long, default_value_t = control_plane::server::limits::DEFAULT_MAX_STREAMS,
              value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
        max_streams: usize,
        /// Log format.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        /// The DNS server that resolves host names in endpoints
        /// [default: the system's, from /etc/resolv.conf].
        #[arg(long, value_name = "ADDR:PORT")]
        dns_server: Option<SocketAddr>,
    },
    /// Check config files; print every error with file, line, column and path.
    Validate {
        /// Files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Print the resources (and versions) a node would be served, as
    /// protobuf JSON; inline secrets are redacted.
    Render {
        /// The config file.
        file: PathBuf,
        /// Show the view of the node with this id (its `nodes:` selection);
        /// without it, everything, as a node that matches no entry.
        #[arg(long)]
        node_id: Option<String>,
        /// The node's cluster, for `nodes:` entries that match on it.
        #[arg(long, requires = "node_id")]
        node_cluster: Option<String>,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Print the v3 form of an Envoy v2 config's static_resources (servable
    /// by pylon-xds); the changes are listed in a comment at the top.
    Migrate {
        /// The v2 file (an envoy.yaml, or a pylon-xds config).
        file: PathBuf,
        /// Keep the file's other top-level keys (admin, node, ...) so the
        /// output can be used as an Envoy or pylon-proxy bootstrap.
        #[arg(long)]
        bootstrap: bool,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Validate a config file and write it to etcd, showing what changes
    /// (compare-and-swap on the revision read: a concurrent write makes it
    /// fail, writing nothing).
    Apply {
        /// The config file.
        #[arg(required_unless_present = "watch_file", conflicts_with = "watch_file")]
        file: Option<PathBuf>,
        /// The config in etcd: etcd://HOST:PORT[,HOST:PORT...]/KEY.
        #[arg(long, value_name = "URL")]
        etcd: EtcdUrl,
        #[command(flatten)]
        etcd_tls: EtcdTlsArgs,
        /// Write only if the key is at this etcd revision (the one the
        /// caller last saw; 0: only if the key does not exist yet).
        #[arg(long, value_name = "N")]
        expect_revision: Option<i64>,
        /// Keep applying this file each time it is saved, until stopped
        /// (stops writing at the first conflicting edit made in etcd).
        #[arg(long, value_name = "FILE")]
        watch_file: Option<PathBuf>,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// List the revisions of the config etcd still holds: revision, time,
    /// version, what changed, and who wrote it.
    History {
        /// The config in etcd: etcd://HOST:PORT[,HOST:PORT...]/KEY.
        #[arg(long, value_name = "URL")]
        etcd: EtcdUrl,
        #[command(flatten)]
        etcd_tls: EtcdTlsArgs,
        /// The most revisions shown, newest first.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Show what changes, resource by resource, from the config as of etcd
    /// revision FROM to revision TO (default: the current one).
    Diff {
        /// The older revision.
        from: i64,
        /// The newer revision [default: the current one].
        to: Option<i64>,
        /// The config in etcd: etcd://HOST:PORT[,HOST:PORT...]/KEY.
        #[arg(long, value_name = "URL")]
        etcd: EtcdUrl,
        #[command(flatten)]
        etcd_tls: EtcdTlsArgs,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Write the config as it was at an older etcd revision, byte for byte,
    /// through the same compare-and-swap as apply.
    Rollback {
        /// The revision to restore.
        revision: i64,
        /// The config in etcd: etcd://HOST:PORT[,HOST:PORT...]/KEY.
        #[arg(long, value_name = "URL")]
        etcd: EtcdUrl,
        #[command(flatten)]
        etcd_tls: EtcdTlsArgs,
        /// Write only if the key is at this etcd revision.
        #[arg(long, value_name = "N")]
        expect_revision: Option<i64>,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Print an Envoy bootstrap that connects Envoy to pylon-xds over ADS.
    Bootstrap {
        /// The node id the client presents.
        #[arg(long)]
        node_id: String,
        /// The node cluster the client presents.
        #[arg(long, default_value = "pylon")]
        node_cluster: String,
        /// pylon-xds's gRPC address: HOST:PORT, an IP address or a host
        /// name; several replicas separated by commas.
        #[arg(long, default_value = app::DEFAULT_XDS, value_name = "HOST:PORT[,HOST:PORT...]",
              value_delimiter = ',')]
        xds: Vec<control_plane::bootstrap::XdsAddress>,
        /// Use delta (incremental) ADS instead of state-of-the-world.
        #[arg(long)]
        delta: bool,
        /// Envoy's admin address.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
        /// Print the proxyless gRPC bootstrap JSON (GRPC_XDS_BOOTSTRAP) instead.
        #[arg(long)]
        grpc: bool,
        /// TLS to pylon-xds: the CA its certificate chains to (PEM, a file on
        /// the client's host).
        #[arg(long, value_name = "FILE")]
        tls_ca: Option<PathBuf>,
        /// Mutual TLS: the client's certificate (PEM, on the client's host).
        #[arg(long, requires = "tls_key", requires = "tls_ca", value_name = "FILE")]
        tls_cert: Option<PathBuf>,
        /// The private key of --tls-cert.
        #[arg(long, requires = "tls_cert", value_name = "FILE")]
        tls_key: Option<PathBuf>,
        /// The name pylon-xds's certificate must carry (default: the host of --xds).
        #[arg(long, requires = "tls_ca", value_name = "NAME")]
        tls_sni: Option<String>,
    },
    /// Show the served version, the last reload error and every connected node.
    Status {
        /// pylon-xds's admin address.
        #[arg(long, default_value = app::DEFAULT_ADMIN)]
        admin: SocketAddr,
        /// Print the raw JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// TLS for the xDS and admin listeners.
#[derive(clap::Args, Debug, Clone)]
struct TlsArgs {
    /// Serve xDS over TLS with this certificate chain (PEM); reloaded when
    /// the file changes.
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Mutual TLS: refuse clients without a certificate signed by this CA
    /// (PEM), and bind node identities with the config's `clients:` rules.
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    client_ca: Option<PathBuf>,
    /// The admin listener's certificate (default: the xDS pair when the
    /// admin address is not loopback).
    #[arg(long, requires = "admin_tls_key", value_name = "FILE")]
    admin_tls_cert: Option<PathBuf>,
    /// The private key of --admin-tls-cert.
    #[arg(long, requires = "admin_tls_cert", value_name = "FILE")]
    admin_tls_key: Option<PathBuf>,
    /// Serve plaintext on addresses other than loopback anyway (anyone who
    /// can reach the port can read any node's config).
    #[arg(long)]
    insecure: bool,
}

impl TlsArgs {
    fn xds(&self) -> Option<pylon::tls::Files> {
        Some(pylon::tls::Files {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            ca: self.client_ca.clone(),
        })
    }

    fn admin(&self) -> Option<pylon::tls::Files> {
        Some(pylon::tls::Files {
            cert: self.admin_tls_cert.clone()?,
            key: self.admin_tls_key.clone()?,
            ca: None,
        })
    }
}

/// TLS to etcd.
#[derive(clap::Args, Debug, Clone)]
struct EtcdTlsArgs {
    /// TLS to etcd: the CA the members' certificates chain to (PEM).
    #[arg(long, value_name = "FILE")]
    etcd_ca: Option<PathBuf>,
    /// The client certificate presented to etcd (PEM).
    #[arg(long, requires = "etcd_key", requires = "etcd_ca", value_name = "FILE")]
    etcd_cert: Option<PathBuf>,
    /// The private key of --etcd-cert.
    #[arg(long, requires = "etcd_cert", value_name = "FILE")]
    etcd_key: Option<PathBuf>,
}

impl EtcdTlsArgs {
    fn options(self, url: EtcdUrl) -> EtcdOptions {
        EtcdOptions {
            url,
            tls: self.etcd_ca.map(|ca| EtcdTls {
                ca,
                cert_key: self.etcd_cert.zip(self.etcd_key),
            }),
        }
    }
}

/// How a config file is read.
#[derive(clap::Args, Debug, Clone, Copy)]
struct LimitArgs {
    /// The largest config file accepted, in bytes.
    #[arg(long, default_value_t = Limits::default().max_bytes)]
    max_config_bytes: usize,
    /// Accept private keys and other secrets written inline in TLS contexts
    /// (every node selected for the resource receives them; CSDS and status
    /// still never show them).
    #[arg(long)]
    allow_inline_secrets: bool,
}

impl LimitArgs {
    fn limits(self) -> Limits {
        Limits {
            max_bytes: self.max_config_bytes,
            ..Limits::default()
        }
    }

    fn options(self) -> control_plane::config::Options {
        control_plane::config::Options {
            limits: self.limits(),
            allow_inline_secrets: self.allow_inline_secrets,
        }
    }
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pylon-xds: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve {
            config,
            etcd,
            etcd_tls,
            cache_dir,
            listen,
            admin,
            debounce_ms,
            state_dir,
            no_state,
            limits,
            tls,
            max_streams,
            log_format,
            dns_server,
        } => {
            pylon::logging::init(matches!(log_format, LogFormat::Json));
            pylon::limits::raise_nofile();
            anyhow::ensure!(
                etcd.is_some() || etcd_tls.etcd_ca.is_none(),
                "--etcd-ca, --etcd-cert and --etcd-key go with --etcd"
            );
            let state_dir = if no_state {
                None
            } else {
                let dir = cache_dir
                    .or(state_dir)
                    .or_else(control_plane::state::default_dir);
                if dir.is_none() {
                    tracing::warn!("no state directory (set --state-dir or HOME): the last good config is not kept");
                }
                dir
            };
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(serve(ServeOptions {
                config: config.unwrap_or_default(),
                etcd: etcd.map(|url| etcd_tls.options(url)),
                xds_listen: listen,
                admin_listen: Some(admin),
                debounce: Duration::from_millis(debounce_ms),
                limits: limits.limits(),
                allow_inline_secrets: limits.allow_inline_secrets,
                state_dir,
                max_streams,
                tls: tls.xds(),
                admin_tls: tls.admin(),
                insecure: tls.insecure,
                dns_server,
            }))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { files, limits } => Ok(validate(&files, &limits.options())),
        Command::Render {
            file,
            node_id,
            node_cluster,
            limits,
        } => render(&file, node_id, node_cluster, &limits.options()),
        Command::Apply {
            file,
            etcd,
            etcd_tls,
            expect_revision,
            watch_file,
            limits,
        } => {
            let opts = etcd_tls.options(etcd);
            let options = limits.options();
            let rt = tokio::runtime::Runtime::new()?;
            if let Some(file) = watch_file {
                pylon::logging::init(false);
                return rt.block_on(async {
                    let etcd = Etcd::connect(&opts).await?.with_patience(COMMAND_PATIENCE);
                    let stop = tokio_util::sync::CancellationToken::new();
                    let s = stop.clone();
                    tokio::spawn(async move {
                        let _ = tokio::signal::ctrl_c().await;
                        s.cancel();
                    });
                    control_plane::etcd::cli::watch_file(
                        &etcd,
                        &file,
                        &options,
                        app::DEFAULT_DEBOUNCE,
                        stop,
                    )
                    .await?;
                    Ok(ExitCode::SUCCESS)
                });
            }
            let file = file.context("a FILE to apply")?;
            rt.block_on(etcd_command(&opts, |etcd| async move {
                control_plane::etcd::cli::apply(&etcd, &file, &options, expect_revision).await
            }))
        }
        Command::History {
            etcd,
            etcd_tls,
            limit,
            limits,
        } => {
            let options = limits.options();
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(etcd_command(&etcd_tls.options(etcd), |etcd| async move {
                control_plane::etcd::cli::history(&etcd, limit, &options).await
            }))
        }
        Command::Diff {
            from,
            to,
            etcd,
            etcd_tls,
            limits,
        } => {
            let options = limits.options();
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(etcd_command(&etcd_tls.options(etcd), |etcd| async move {
                control_plane::etcd::cli::diff_revisions(&etcd, from, to, &options).await
            }))
        }
        Command::Rollback {
            revision,
            etcd,
            etcd_tls,
            expect_revision,
            limits,
        } => {
            let options = limits.options();
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(etcd_command(&etcd_tls.options(etcd), |etcd| async move {
                control_plane::etcd::cli::rollback(&etcd, revision, &options, expect_revision).await
            }))
        }
        Command::Migrate {
            file,
            bootstrap,
            limits,
        } => {
            let limits = limits.limits();
            let name = file.display().to_string();
            let converted = control_plane::config::read_file(&file, &limits).and_then(|bytes| {
                control_plane::config::migrate(&name, &bytes, &limits, bootstrap)
            });
            match converted {
                Ok((text, changes)) => {
                    emit(&text);
                    eprintln!("{name}: {changes} v2 construct(s) rewritten");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Bootstrap {
            node_id,
            node_cluster,
            xds,
            delta,
            admin,
            grpc,
            tls_ca,
            tls_cert,
            tls_key,
            tls_sni,
        } => {
            let opts = BootstrapOptions {
                node_id,
                node_cluster,
                xds,
                delta,
                admin,
                tls: tls_ca.map(|ca| control_plane::bootstrap::ClientTlsFiles {
                    ca,
                    cert_key: tls_cert.zip(tls_key),
                    sni: tls_sni,
                }),
            };
            if let Err(e) = opts.check() {
                anyhow::bail!("{e}");
            }
            if grpc {
                emit(&control_plane::bootstrap::grpc_bootstrap(&opts));
            } else {
                emit(&envoy_bootstrap(&opts));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { admin, json } => {
            let rt = tokio::runtime::Runtime::new()?;
            let (code, body) = rt
                .block_on(control_plane::admin::get(admin, "/status"))
                .with_context(|| format!("cannot reach pylon-xds admin at {admin}"))?;
            anyhow::ensure!(code == 200, "admin answered {code}: {body}");
            if json {
                emit(&format!("{body}\n"));
            } else {
                let status: serde_json::Value = serde_json::from_str(&body)?;
                emit(&render_status(&status));
            }
            let failing = body.contains("\"last_reload_error\": \"");
            Ok(if failing {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

/// How long an etcd command keeps trying while no member answers.
const COMMAND_PATIENCE: Duration = Duration::from_secs(10);

/// Runs one etcd command: its text on standard output; an error on
/// standard error, exiting 2 for a conflict (someone else wrote the key)
/// and 1 for anything else.
async fn etcd_command<F, Fut>(opts: &EtcdOptions, run: F) -> anyhow::Result<ExitCode>
where
    F: FnOnce(Etcd) -> Fut,
    Fut: std::future::Future<Output = Result<String, CliError>>,
{
    // An election or a member restart takes a moment: keep trying for a
    // while before saying etcd is unreachable.
    let etcd = Etcd::connect(opts).await?.with_patience(COMMAND_PATIENCE);
    match run(etcd).await {
        Ok(text) => {
            emit(&text);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("pylon-xds: {e}");
            Ok(match e {
                CliError::Conflict { .. } => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            })
        }
    }
}

/// Writes `text` to standard output. A reader that went away (`status --json
/// | grep -q`, `| head`) is not an error: the rest is simply not wanted.
fn emit(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("pylon-xds: cannot write to standard output: {e}");
        }
    }
}

async fn serve(opts: ServeOptions) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let running = control_plane::serve(opts).await?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => running.reload(),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}

fn validate(files: &[PathBuf], options: &control_plane::config::Options) -> ExitCode {
    let mut failed = false;
    for f in files {
        match source::load(f, options, None) {
            Ok(snap) => {
                let [c, e, l, r] = snap.counts();
                emit(&format!(
                    "{}: ok, version {} ({c} clusters, {e} load assignments, {l} listeners, {r} route configurations)\n",
                    f.display(),
                    snap.version
                ));
            }
            Err(e) => {
                failed = true;
                eprintln!("{e}");
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn render(
    file: &std::path::Path,
    node_id: Option<String>,
    node_cluster: Option<String>,
    options: &control_plane::config::Options,
) -> anyhow::Result<ExitCode> {
    use control_plane::render;
    let loaded = control_plane::config::load_file(file, options).map(|r| {
        let names = render::host_names(&r.names);
        (r, names)
    });
    let (resources, names) = match loaded {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let snap = control_plane::snapshot::Snapshot::build(resources, None)
        .with_context(|| file.display().to_string())?;
    let node = node_id.map(|id| envoy_types::pb::envoy::config::core::v3::Node {
        id,
        cluster: node_cluster.unwrap_or_default(),
        ..Default::default()
    });
    let doc = render::render(std::sync::Arc::new(snap), node.as_ref(), &names)?;
    emit(&format!("{}\n", serde_json::to_string_pretty(&doc)?));
    Ok(ExitCode::SUCCESS)
}

/// The `/status` document as a table, like `istioctl proxy-status`.
fn render_status(s: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let str_of = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
    let _ = writeln!(out, "config:   {}", str_of(&s["config"]));
    let _ = writeln!(out, "version:  {}", str_of(&s["version"]));
    let served_from = str_of(&s["served_from"]);
    if s["etcd"].is_object() {
        let _ = writeln!(out, "source:   {served_from}");
    } else if !served_from.is_empty() && served_from != str_of(&s["config"]) {
        let _ = writeln!(
            out,
            "source:   the last good revision, {served_from} (the config was invalid at start-up)"
        );
    }
    if s["etcd"].is_object() {
        let e = &s["etcd"];
        let rev = |v: &serde_json::Value| v.as_i64().map_or("?".to_string(), |r| r.to_string());
        let cached = if e["served_from_cache"] == true {
            " (from this replica's cache)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "etcd:     revision {} served{cached}",
            rev(&e["revision"])
        );
        if !e["invalid_revision"].is_null() {
            let _ = writeln!(
                out,
                "etcd:     revision {} cannot be served (see reload below)",
                rev(&e["invalid_revision"])
            );
        }
        if e["connected"] == true {
            let _ = writeln!(out, "etcd:     connected through {}", str_of(&e["member"]));
        } else {
            let since = e["outage_since_unix_ms"]
                .as_u64()
                .map(control_plane::etcd::cli::utc)
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "etcd:     UNREACHABLE since {since} UTC: {} (serving the revision above; reconnecting)",
                str_of(&e["last_error"])
            );
        }
    }
    if let Some(e) = s["last_good_error"].as_str() {
        let _ = writeln!(out, "state:    cannot save the last good revision: {e}");
    }
    let r = &s["resources"];
    let _ = writeln!(
        out,
        "serving:  {} clusters, {} load assignments, {} listeners, {} route configurations",
        r["clusters"], r["endpoints"], r["listeners"], r["routes"]
    );
    match s["last_reload_error"].as_str() {
        Some(e) => {
            let _ = writeln!(out, "reload:   FAILED, still serving the version above:");
            for line in e.lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
        None => {
            let _ = writeln!(out, "reload:   ok");
        }
    }
    // Endpoint host names: what each serves, and a failing lookup.
    for n in s["dns"].as_array().into_iter().flatten() {
        let addrs: Vec<String> = n["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .map(str_of)
            .collect();
        let served = if addrs.is_empty() {
            "no address".to_string()
        } else {
            addrs.join(", ")
        };
        let _ = match n["last_error"].as_str() {
            Some(e) => writeln!(
                out,
                "dns:      {} -> {served} (LOOKUP FAILING: {e}; the addresses above are kept)",
                str_of(&n["name"])
            ),
            None => writeln!(out, "dns:      {} -> {served}", str_of(&n["name"])),
        };
    }
    let nodes = s["nodes"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(out, "\n{} stream(s)", nodes.len());
    if nodes.is_empty() {
        return out;
    }
    let identities = nodes.iter().any(|n| n["identity"].is_string());
    let mut header = vec![
        "NODE".to_string(),
        "CLUSTER".into(),
        "SELECTION".into(),
        "STREAM".into(),
        "AGENT".into(),
    ];
    if identities {
        header.push("IDENTITY".into());
    }
    header.extend(["CDS", "EDS", "LDS", "RDS"].map(String::from));
    let mut rows = vec![header];
    let mut nacks = Vec::new();
    for n in &nodes {
        let mut row = vec![
            str_of(&n["node"]),
            str_of(&n["cluster"]),
            str_of(&n["selection"]),
            format!("{}#{}", str_of(&n["protocol"]), n["stream"]),
            str_of(&n["user_agent"]),
        ];
        if identities {
            row.push(n["identity"].as_str().unwrap_or("-").to_string());
        }
        for ty in ResourceType::ALL {
            let t = &n["types"][ty.short()];
            let state = str_of(&t["state"]);
            row.push(match state.as_str() {
                "NOT_SENT" => "-".to_string(),
                _ => format!("{} {}", state, short(&str_of(&t["acked_version"]))),
            });
            if let Some(m) = t["last_nack"]["message"].as_str() {
                let when = if state == "ERROR" {
                    "rejected"
                } else {
                    "earlier"
                };
                nacks.push(format!(
                    "{} {} ({when} version {}): {}",
                    str_of(&n["node"]),
                    ty.short(),
                    short(t["last_nack"]["version"].as_str().unwrap_or("")),
                    m
                ));
            }
        }
        rows.push(row);
    }
    control_plane::table::write(&mut out, &rows);
    if !nacks.is_empty() {
        let _ = writeln!(out, "\nlast NACKs:");
        for n in nacks {
            let _ = writeln!(out, "  {n}");
        }
    }
    out
}

fn short(v: &str) -> String {
    v.chars().take(8).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_shows_the_etcd_revision_and_outage() {
        let mut status = serde_json::json!({
            "config": "etcd://127.0.0.1:2379/pylon/config", "version": "v", "resources": {},
            "last_reload_error": null, "nodes": [],
            "etcd": {"revision": 7, "served_from_cache": false, "invalid_revision": 9,
                     "connected": true, "member": "127.0.0.1:2379",
                     "outage_since_unix_ms": null, "last_error": null},
        });
        let out = render_status(&status);
        assert!(out.contains("etcd:     revision 7 served\n"), "{out}");
        assert!(out.contains("revision 9 cannot be served"), "{out}");
        assert!(out.contains("connected through 127.0.0.1:2379"), "{out}");
        status["etcd"]["connected"] = false.into();
        status["etcd"]["served_from_cache"] = true.into();
        status["etcd"]["outage_since_unix_ms"] = 0.into();
        status["etcd"]["last_error"] = "etcd is unreachable: refused".into();
        let out = render_status(&status);
        assert!(out.contains("(from this replica's cache)"), "{out}");
        assert!(
            out.contains("UNREACHABLE since 1970-01-01 00:00:00 UTC: etcd is unreachable: refused"),
            "{out}"
        );
    }

    #[test]
    fn status_shows_failing_dns_names() {
        let status = serde_json::json!({
            "config": "pylon.yaml", "version": "v", "resources": {},
            "last_reload_error": null, "nodes": [],
            "dns": [
                {"name": "a.test", "addresses": ["127.0.0.2", "127.0.0.3"], "last_error": null},
                {"name": "b.test", "addresses": ["127.0.0.4"], "last_error": "request timed out"},
            ],
        });
        let out = render_status(&status);
        assert!(
            out.contains("dns:      a.test -> 127.0.0.2, 127.0.0.3\n"),
            "{out}"
        );
        assert!(
            out.contains("dns:      b.test -> 127.0.0.4 (LOOKUP FAILING: request timed out; the addresses above are kept)\n"),
            "{out}"
        );
    }

    #[test]
    fn status_table_shows_selection_states_and_nacks() {
        let status = serde_json::json!({
            "config": "pylon.yaml",
            "version": "0123456789abcdef",
            "resources": {"clusters": 2, "endpoints": 2, "listeners": 2, "routes": 2},
            "last_reload_error": null,
            "nodes": [{
                "node": "grpc-1", "cluster": "clients", "selection": "proxyless",
                "protocol": "ads", "stream": 7, "user_agent": "grpc-python 1.85.1",
                "types": {
                    "cds": {"state": "SYNCED", "acked_version": "aaaaaaaaaaaaaaaa"},
                    "eds": {"state": "STALE", "acked_version": null},
                    "lds": {"state": "ERROR", "acked_version": "bbbbbbbbbbbbbbbb",
                            "last_nack": {"version": "cccccccccccccccc", "message": "no api_listener"}},
                    "rds": {"state": "NOT_SENT"}
                }
            }]
        });
        let out = render_status(&status);
        let lines: Vec<&str> = out.lines().collect();
        let header = lines.iter().position(|l| l.starts_with("NODE")).unwrap();
        let columns: Vec<&str> = lines[header].split_whitespace().collect();
        assert_eq!(
            columns,
            [
                "NODE",
                "CLUSTER",
                "SELECTION",
                "STREAM",
                "AGENT",
                "CDS",
                "EDS",
                "LDS",
                "RDS"
            ]
        );
        let row = lines[header + 1];
        for cell in [
            "grpc-1",
            "proxyless",
            "ads#7",
            "SYNCED aaaaaaaa",
            "ERROR bbbbbbbb",
        ] {
            assert!(row.contains(cell), "{cell:?} missing from {row:?}");
        }
        assert!(
            out.contains("grpc-1 lds (rejected version cccccccc): no api_listener"),
            "{out}"
        );
    }
}
