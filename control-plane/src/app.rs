//! Wires the pipeline together: source -> cache -> xDS server + admin server.
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

use crate::admin::{self, AdminState};
use crate::cache::Cache;
use crate::config::Limits;
use crate::dns::Dns;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::server::{Shared, XdsServer};
use crate::source::{self, Reloader, Source, SourceStatus};
use crate::state::LastGood;

/// Default gRPC (xDS) listen address.
pub const DEFAULT_XDS: &str = "127.0.0.1:18000";
/// Default admin listen address.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:19000";
/// Default quiet period after the last file event before reloading.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(100);
/// How long shutdown waits for tasks before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How to run one pylon-xds server.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The YAML source of truth.
    pub config: PathBuf,
    /// gRPC (xDS) listen address; port 0 picks a free port.
    pub xds_listen: SocketAddr,
    /// Admin HTTP listen address (`/healthz`, `/readyz`, `/metrics`, `/nodes`, `/status`).
    pub admin_listen: Option<SocketAddr>,
    /// Quiet period after the last file event before a reload.
    pub debounce: Duration,
    /// Bounds on the config file (size, nesting, resources).
    pub limits: Limits,
    /// Where the last good revision is kept (see [`crate::state`]); `None`
    /// keeps none, and an invalid file at start-up is then fatal.
    pub state_dir: Option<PathBuf>,
    /// xDS streams served at once; beyond, a new stream is refused with
    /// `UNAVAILABLE` ([`crate::server::limits::DEFAULT_MAX_STREAMS`] by default).
    pub max_streams: usize,
    /// The DNS server that resolves host names in endpoints; `None`: the
    /// system's (`/etc/resolv.conf`).
    pub dns_server: Option<SocketAddr>,
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
        path: opts.config.clone(),
        limits: opts.limits,
        last_good: opts
            .state_dir
            .as_deref()
            .map(|dir| LastGood::new(dir, &opts.config)),
        dns: dns.clone(),
    };
    // Host names are looked up before the first revision is served, which
    // blocks: off the runtime's worker threads.
    let starting = source.clone();
    let (snapshot, started) = tokio::task::spawn_blocking(move || starting.start())
        .await
        .context("loading the config")??;
    info!(
        config = %opts.config.display(),
        version = %snapshot.version,
        "config loaded"
    );
    let cache = Cache::new(snapshot);
    let registry = Arc::new(Registry::with_max_streams(
        Arc::clone(&metrics),
        opts.max_streams,
    ));
    let shutdown = CancellationToken::new();
    let reloader = Arc::new(Reloader::new(source, &started, cache.clone(), metrics));
    let shared = Arc::new(Shared {
        cache: cache.clone(),
        registry: Arc::clone(&registry),
        shutdown: shutdown.clone(),
    });

    let xds = TcpListener::bind(opts.xds_listen)
        .await
        .with_context(|| format!("binding xDS address {}", opts.xds_listen))?;
    let xds_addr = xds.local_addr()?;
    let admin_state = AdminState {
        cache,
        registry,
        reloader: Arc::clone(&reloader),
        shutdown: shutdown.clone(),
    };
    let mut tasks = Vec::new();
    let admin_addr = match opts.admin_listen {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding admin address {addr}"))?;
            let bound = l.local_addr()?;
            tasks.push(tokio::spawn(admin::serve(
                l,
                admin_state.clone(),
                shutdown.clone(),
            )));
            info!(addr = %bound, "admin listening");
            Some(bound)
        }
        None => None,
    };

    let router = XdsServer::new(shared).router();
    let stop = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        // Accept errors (out of descriptors) are waited out here: tonic
        // would retry them at once, spinning.
        let incoming = pylon::accept::incoming(xds, "xds");
        if let Err(e) = router
            .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
            .await
        {
            warn!(error = %e, "xDS server ended with an error");
        }
    }));
    info!(addr = %xds_addr, "xDS (ADS, CDS, EDS, LDS, RDS; SotW and delta) listening");

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
    tasks.push(tokio::spawn(async move {
        if let Err(e) = source::watch(r, opts.debounce, n, s).await {
            warn!(error = %e, "config watch failed; SIGHUP still reloads");
        }
    }));

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
