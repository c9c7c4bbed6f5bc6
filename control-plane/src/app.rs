//! Wires the pipeline together: source (a file, or a key in etcd) -> cache ->
//! xDS server + admin server.
//!
//! Used by `main` (`pylon-xds serve`) and by tests, which run several servers
//! in one process: nothing here is global, and shutdown is an argument
//! ([`Running::shutdown`]), not a signal handler.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::admin::{self, AdminState, TransportInfo};
use crate::cache::Cache;
use crate::config::Limits;
use crate::dns::Dns;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::server::{Shared, Transport, XdsServer};
use crate::source::{self, Reloader, Source, SourceStatus};
use crate::state::LastGood;

/// Default gRPC (xDS) listen address.
pub const DEFAULT_XDS: &str = "127.0.0.1:18000";
/// Default admin listen address.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:19000";
/// Default quiet period after the last file event before reloading.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(100);
/// Quiet period after the last change of a certificate, key or CA file.
const TLS_DEBOUNCE: Duration = Duration::from_millis(200);
/// How long shutdown waits for tasks before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How to run one pylon-xds server.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The YAML source of truth (unused when `etcd` is set).
    pub config: PathBuf,
    /// The source of truth in etcd instead of `config` (`--etcd`).
    pub etcd: Option<crate::etcd::EtcdOptions>,
    /// gRPC (xDS) listen address; port 0 picks a free port.
    pub xds_listen: SocketAddr,
    /// Admin HTTP listen address (`/healthz`, `/readyz`, `/metrics`, `/nodes`, `/status`).
    pub admin_listen: Option<SocketAddr>,
    /// Quiet period after the last file event before a reload.
    pub debounce: Duration,
    /// Bounds on the config file (size, nesting, resources).
    pub limits: Limits,
    /// Accept secrets written inline in TLS contexts (`--allow-inline-secrets`).
    pub allow_inline_secrets: bool,
    /// Where the last good revision is kept (see [`crate::state`]): the
    /// state directory, or with `etcd` the cache directory; `None` keeps
    /// none, and an invalid (or, for etcd, unreachable) source at start-up
    /// is then fatal.
    pub state_dir: Option<PathBuf>,
    /// xDS streams served at once; beyond, a new stream is refused with
    /// `UNAVAILABLE` ([`crate::server::limits::DEFAULT_MAX_STREAMS`] by default).
    pub max_streams: usize,
    /// TLS for the xDS listener (with `ca`, mutual TLS); `None`: plaintext,
    /// which only a loopback address or `insecure` allows.
    pub tls: Option<pylon::tls::Files>,
    /// TLS for the admin listener (`ca` unused); `None`: the xDS pair when
    /// the admin address is not loopback, else plaintext.
    pub admin_tls: Option<pylon::tls::Files>,
    /// Serve plaintext beyond loopback anyway (`--insecure`).
    pub insecure: bool,
    /// The DNS server that resolves host names in endpoints; `None`: the
    /// system's (`/etc/resolv.conf`).
    pub dns_server: Option<SocketAddr>,
}

impl ServeOptions {
    /// Options with the defaults for everything but the config and addresses.
    pub fn new(config: PathBuf, xds_listen: SocketAddr, admin_listen: Option<SocketAddr>) -> Self {
        ServeOptions {
            config,
            etcd: None,
            xds_listen,
            admin_listen,
            debounce: DEFAULT_DEBOUNCE,
            limits: Limits::default(),
            allow_inline_secrets: false,
            state_dir: None,
            max_streams: crate::server::limits::DEFAULT_MAX_STREAMS,
            tls: None,
            admin_tls: None,
            insecure: false,
            dns_server: None,
        }
    }
}

/// The refusal to serve plaintext on `addr` (the xDS or admin listener,
/// `what`), unless it is loopback or `insecure` says so. Checked before
/// anything is bound.
fn plaintext_allowed(what: &str, addr: SocketAddr, insecure: bool) -> anyhow::Result<()> {
    if pylon::tls::is_loopback(&addr) {
        return Ok(());
    }
    if insecure {
        warn!(
            %addr,
            "serving {what} in PLAINTEXT beyond loopback (--insecure): anyone who can reach it \
             can read any node's config"
        );
        return Ok(());
    }
    let flags = if what == "xDS" {
        "--tls-cert FILE --tls-key FILE (and --client-ca FILE for mutual TLS)"
    } else {
        "--admin-tls-cert FILE --admin-tls-key FILE, or the xDS pair (--tls-cert/--tls-key)"
    };
    anyhow::bail!(
        "refusing to serve {what} in plaintext on {addr}, which is not a loopback address: \
         add TLS with {flags}, listen on 127.0.0.1, or pass --insecure to accept the risk"
    )
}

/// A running server. Dropping it does not stop it: call [`Running::shutdown`].
#[derive(Debug)]
pub struct Running {
    /// The bound xDS address.
    pub xds_addr: SocketAddr,
    /// The bound admin address.
    pub admin_addr: Option<SocketAddr>,
    admin: AdminState,
    reload: Arc<Notify>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// Loads the config (falling back to the last good revision when it is
/// invalid; with neither, an error), binds, and serves in the background.
pub async fn serve(opts: ServeOptions) -> anyhow::Result<Running> {
    let metrics = Arc::new(Metrics::new());
    let dns = match Dns::new(opts.dns_server, Arc::clone(&metrics)) {
        Ok(dns) => Some(Arc::new(dns)),
        Err(e) => {
            // Only host names in endpoints need it: IP endpoints are served.
            error!(error = %e, "no DNS resolver: host names in endpoints will have no addresses");
            None
        }
    };
    let source = Source {
        path: match &opts.etcd {
            Some(e) => PathBuf::from(e.url.to_string()),
            None => opts.config.clone(),
        },
        options: crate::config::Options {
            limits: opts.limits,
            allow_inline_secrets: opts.allow_inline_secrets,
        },
        last_good: opts.state_dir.as_deref().map(|dir| match &opts.etcd {
            Some(e) => LastGood::for_etcd_key(dir, &e.url.key),
            None => LastGood::new(dir, &opts.config),
        }),
        dns: dns.clone(),
    };
    // Host names are looked up before the first revision is served, which
    // blocks: off the runtime's worker threads.
    let (snapshot, started, etcd_start) = match &opts.etcd {
        None => {
            let starting = source.clone();
            let (snapshot, started) = tokio::task::spawn_blocking(move || starting.start())
                .await
                .context("loading the config")??;
            (snapshot, started, None)
        }
        Some(e) => {
            let s = crate::etcd::serve::start(&source, e).await?;
            (s.snapshot, s.started, Some((s.status, s.watch_from)))
        }
    };
    info!(
        config = %source.path.display(),
        version = %snapshot.version,
        "config loaded"
    );
    let cache = Cache::new(snapshot);
    let registry = Arc::new(Registry::with_max_streams(
        Arc::clone(&metrics),
        opts.max_streams,
    ));
    let shutdown = CancellationToken::new();
    let reloader = Arc::new(Reloader::new(
        source,
        &started,
        cache.clone(),
        Arc::clone(&metrics),
    ));
    let etcd_watch = etcd_start.map(|(status, watch_from)| {
        reloader.set_etcd(status);
        watch_from
    });
    // Plaintext beyond loopback is refused before anything is bound.
    if opts.tls.is_none() {
        plaintext_allowed("xDS", opts.xds_listen, opts.insecure)?;
    }
    let admin_files = match (&opts.admin_tls, opts.admin_listen) {
        (Some(f), _) => Some(f.clone()),
        (None, Some(a)) if !pylon::tls::is_loopback(&a) => opts
            .tls
            .clone()
            .map(|f| pylon::tls::Files { ca: None, ..f }),
        _ => None,
    };
    if let (None, Some(a)) = (&admin_files, opts.admin_listen) {
        plaintext_allowed("the admin API", a, opts.insecure)?;
    }
    let xds_tls = opts
        .tls
        .clone()
        .map(|f| pylon::tls::ServerTls::load(f, &[b"h2"]))
        .transpose()
        .context("xDS TLS")?;
    let admin_tls = admin_files
        .map(|f| pylon::tls::ServerTls::load(f, &[b"h2", b"http/1.1"]))
        .transpose()
        .context("admin TLS")?;
    let transport = match &xds_tls {
        Some(t) if t.mutual() => Transport::MutualTls,
        Some(_) => Transport::Tls,
        None if pylon::tls::is_loopback(&opts.xds_listen) => Transport::LocalPlaintext,
        None => Transport::InsecurePlaintext,
    };
    if transport == Transport::MutualTls && started_policy_is_open(&cache) {
        warn!("mutual TLS without a `clients:` section: any client with a certificate from the CA may claim any node");
    }
    let shared = Arc::new(Shared {
        cache: cache.clone(),
        registry: Arc::clone(&registry),
        shutdown: shutdown.clone(),
        transport,
    });

    let xds = TcpListener::bind(opts.xds_listen)
        .await
        .with_context(|| format!("binding xDS address {}", opts.xds_listen))?;
    let xds_addr = xds.local_addr()?;
    let cache_for_shutdown = cache.clone();
    let admin_state = AdminState {
        cache,
        registry,
        reloader: Arc::clone(&reloader),
        shutdown: shutdown.clone(),
        transport: TransportInfo {
            xds: transport,
            insecure: opts.insecure,
            xds_tls: xds_tls.clone(),
            admin_tls: admin_tls.clone(),
        },
        heartbeat: admin::Heartbeat::current(),
    };
    let mut tasks = Vec::new();
    let admin_addr = match opts.admin_listen {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding admin address {addr}"))?;
            let bound = l.local_addr()?;
            tasks.push(tokio::spawn(
                admin_state.heartbeat.clone().run(shutdown.clone()),
            ));
            tasks.push(spawn_admin_thread(
                l,
                admin_tls.clone(),
                admin_state.clone(),
                shutdown.clone(),
            )?);
            info!(addr = %bound, "admin listening");
            Some(bound)
        }
        None => None,
    };

    let router = XdsServer::new(shared).router();
    // Streams wake for their client and for new snapshots only: wake them
    // all once the server stops, so that each ends.
    let (stop, c) = (shutdown.clone(), cache_for_shutdown);
    tasks.push(tokio::spawn(async move {
        stop.cancelled().await;
        c.wake();
    }));
    let stop = shutdown.clone();
    let handshake_failures = metrics.tls_handshake_failures.clone();
    let tls_for_xds = xds_tls.clone();
    tasks.push(tokio::spawn(async move {
        // Accept errors (out of descriptors) are waited out here: tonic
        // would retry them at once, spinning.
        let incoming = pylon::accept::incoming(xds, "xds");
        let served = match tls_for_xds {
            Some(tls) => {
                let refused = move || {
                    handshake_failures.inc();
                };
                let conns = pylon::tls::accept(incoming, tls, refused);
                router
                    .serve_with_incoming_shutdown(conns, stop.cancelled_owned())
                    .await
            }
            None => {
                router
                    .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                    .await
            }
        };
        if let Err(e) = served {
            warn!(error = %e, "xDS server ended with an error");
        }
    }));
    // Certificate, key and CA files are watched like the config.
    for tls in [xds_tls.clone(), admin_tls.clone()].into_iter().flatten() {
        let files = tls.files();
        let stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let target: Arc<dyn pylon::tls::Reload> = tls;
            if let Err(e) = pylon::tls::watch(target, files, TLS_DEBOUNCE, stop).await {
                warn!(error = %e, "TLS file watch failed; certificates are not reloaded");
            }
        }));
    }
    info!(addr = %xds_addr, transport = ?transport, "xDS (ADS, CDS, EDS, LDS, RDS; SotW and delta) listening");

    if let Some(dns) = dns {
        let r = Arc::clone(&reloader);
        tasks.push(tokio::spawn(crate::dns::run(
            dns,
            move || {
                r.republish();
            },
            shutdown.clone(),
        )));
    }

    let reload = Arc::new(Notify::new());
    let (r, n, s) = (reloader, Arc::clone(&reload), shutdown.clone());
    match (etcd_watch, opts.etcd) {
        (Some(first), Some(etcd)) => {
            tasks.push(tokio::spawn(crate::etcd::serve::watch(
                r, etcd, first, n, s,
            )));
        }
        _ => tasks.push(tokio::spawn(async move {
            if let Err(e) = source::watch(r, opts.debounce, n, s).await {
                warn!(error = %e, "config watch failed; SIGHUP still reloads");
            }
        })),
    }

    Ok(Running {
        xds_addr,
        admin_addr,
        admin: admin_state,
        reload,
        shutdown,
        tasks,
    })
}

impl Running {
    /// Asks for a reload of the config file (what SIGHUP does).
    pub fn reload(&self) {
        self.reload.notify_one();
    }

    /// The source's status: version served, last reload error.
    pub fn source_status(&self) -> SourceStatus {
        self.admin.reloader.status()
    }

    /// The `/status` document.
    pub fn status(&self) -> admin::Status {
        self.admin.status()
    }

    /// Stops accepting, closes every stream, and waits (a bounded time) for the tasks to end.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            if tokio::time::timeout(SHUTDOWN_GRACE, t).await.is_err() {
                warn!("a task did not stop within the grace period");
            }
        }
    }
}

/// Whether the served revision has no `clients:` rules.
fn started_policy_is_open(cache: &Cache) -> bool {
    cache.current().policy().clients.is_empty()
}

/// Runs the admin API on a thread and a single-threaded runtime of its own,
/// so that `/healthz` and `/readyz` answer promptly while every xDS stream
/// reconnects at once on a busy machine (`admin::Heartbeat` keeps `/healthz`
/// honest about the xDS runtime). The returned task ends with the thread.
fn spawn_admin_thread(
    listener: TcpListener,
    tls: Option<Arc<pylon::tls::ServerTls>>,
    state: AdminState,
    stop: CancellationToken,
) -> anyhow::Result<JoinHandle<()>> {
    let listener = listener.into_std()?;
    let (done, ended) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("pylon-admin".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the admin runtime");
                    return;
                }
            };
            runtime.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(l) => admin::serve(l, tls, state, stop).await,
                    Err(e) => tracing::error!(error = %e, "cannot serve the admin listener"),
                }
            });
            let _ = done.send(());
        })
        .context("starting the admin thread")?;
    Ok(tokio::spawn(async move {
        let _ = ended.await;
    }))
}
