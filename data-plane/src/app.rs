//! Runs one pylon-proxy: [`serve`] takes a [`Plan`] and a shutdown future.
//!
//! Owned here: applying the static resources, the sink that lays xDS updates
//! over them before they reach the runtime, the xDS client's task (and the
//! watch of its TLS files), the admin server, and the order in which all of
//! it stops (see [`serve`]). Nothing here is process-global and shutdown is an
//! argument, not a signal handler, so tests run whole proxies in one process.
//!
//! Does not own the command line, the bootstrap reader or signals (`main`
//! turns those into a [`Plan`] and a shutdown future), nor the config in
//! force (`runtime`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::admin::{self, Admin};
use crate::model::{self, NackError};
use crate::runtime::{Runtime, RuntimeOptions, DEFAULT_DRAIN_TIME};
use crate::xds::{ConfigSink, XdsClient, XdsOptions};

#[cfg(test)]
mod tests;

/// The target of this module's log lines: the process's own, as they were
/// when `main` held this code, so log filters (`RUST_LOG=pylon_proxy=...`)
/// and the lines themselves stay as operators know them.
const LOG: &str = "pylon_proxy";

/// How often the xDS TLS files are looked at for a renewed certificate or CA.
const TLS_WATCH_INTERVAL: Duration = Duration::from_millis(200);

/// Everything one proxy runs, resolved from the bootstrap and the flags.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The node id presented to the control plane (and shown by the admin API).
    pub node_id: String,
    /// The node cluster, likewise.
    pub node_cluster: String,
    /// Where the admin API listens; port 0 picks a free port.
    pub admin: SocketAddr,
    /// The ADS client's options; `None`: static resources only.
    pub xds: Option<XdsOptions>,
    /// `static_resources` clusters.
    pub clusters: Vec<model::Cluster>,
    /// `static_resources` listeners.
    pub listeners: Vec<model::Listener>,
    /// Worker threads, as the admin API reports them (the caller builds the
    /// tokio runtime [`serve`] runs on).
    pub concurrency: usize,
    /// How long listeners drain; `None`: [`DEFAULT_DRAIN_TIME`].
    pub drain_time: Option<Duration>,
}

/// Runs the proxy `plan` describes until `shutdown` completes, then drains it
/// and returns.
///
/// Start-up applies the static resources (an error there is returned, naming
/// `static_resources`), binds the admin address and starts the xDS client.
/// Once `shutdown` completes the proxy stops in this order:
/// 1. the admin API reports the server as draining (`/ready` fails);
/// 2. the xDS client stops, so no update lands while listeners drain;
/// 3. listeners stop accepting and connections get the drain time to end;
/// 4. what is left (connections, health checkers, the TLS file watch) is
///    stopped at once;
/// 5. the admin API stops; the xDS and admin tasks are awaited.
pub async fn serve(plan: Plan, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let stop_all = CancellationToken::new();
    let runtime = Runtime::new(RuntimeOptions {
        shutdown: stop_all.clone(),
        drain_time: plan.drain_time.unwrap_or(DEFAULT_DRAIN_TIME),
    });
    runtime.mark_static_clusters(plan.clusters.iter().map(|c| c.name.clone()));
    runtime
        .set_clusters(plan.clusters.clone())
        .await
        .context("static_resources")?;
    runtime
        .set_listeners(plan.listeners.clone())
        .await
        .context("static_resources")?;

    let (xds_client, xds_state) = match plan.xds.clone() {
        Some(opts) => {
            info!(target: LOG, addrs = %opts.targets.join(","), tls = opts.tls.is_some(), delta = opts.delta, node = %plan.node_id, "subscribing over ADS");
            if let Some(tls) = &opts.tls {
                watch_tls_files(Arc::clone(&tls.client), stop_all.clone());
            }
            let (c, s) = XdsClient::new(opts);
            (Some(c), Some(s))
        }
        None => (None, None),
    };
    let admin = Arc::new(Admin::new(
        Arc::clone(&runtime),
        plan.node_id.clone(),
        plan.node_cluster.clone(),
        plan.concurrency,
        xds_state,
    ));
    admin.initialized.store(true, Ordering::Relaxed);
    let admin_listener = tokio::net::TcpListener::bind(plan.admin)
        .await
        .with_context(|| format!("binding admin address {}", plan.admin))?;
    info!(target: LOG, addr = %admin_listener.local_addr()?, "admin listening");
    let admin_stop = CancellationToken::new();
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        Arc::clone(&admin),
        admin_stop.clone(),
    ));

    let xds_stop = CancellationToken::new();
    let xds_task = xds_client.map(|c| {
        let sink = Arc::new(Sink {
            runtime: Arc::clone(&runtime),
            static_clusters: plan.clusters.clone(),
            static_listeners: plan.listeners.clone(),
        });
        tokio::spawn(c.run(sink, xds_stop.clone()))
    });

    shutdown.await;
    admin.set_shutting_down();
    xds_stop.cancel();
    runtime.drain().await;
    stop_all.cancel();
    admin_stop.cancel();
    if let Some(t) = xds_task {
        if let Err(e) = t.await {
            error!(target: LOG, error = %e, "xDS task failed");
        }
    }
    let _ = admin_task.await;
    info!(target: LOG, "stopped");
    Ok(())
}

/// Reloads the xDS client's TLS files when they change: a renewed client
/// certificate (or CA) is used for the next connection. Stops with `stop`.
fn watch_tls_files(client: Arc<pylon::tls::ClientTls>, stop: CancellationToken) {
    let files = client.files();
    tokio::spawn(async move {
        let target: Arc<dyn pylon::tls::Reload> = client;
        if let Err(e) = pylon::tls::watch(target, files, TLS_WATCH_INTERVAL, stop).await {
            tracing::warn!(target: LOG, error = %e, "TLS file watch failed; the xDS certificates are not reloaded");
        }
    });
}

/// Applies xDS updates on top of the static resources: the runtime always
/// receives the full set, static first. A dynamic cluster or listener may not
/// reuse a static one's name (Envoy refuses those too); load assignments and
/// route configurations have no static counterpart and pass through as they
/// are.
struct Sink {
    runtime: Arc<Runtime>,
    static_clusters: Vec<model::Cluster>,
    static_listeners: Vec<model::Listener>,
}

/// The first of `dynamic` whose name one of `statics` already has, as a NACK
/// of that resource.
fn no_shadowing<'a>(
    kind: pylon::ResourceType,
    statics: impl Iterator<Item = &'a str>,
    dynamic: impl Iterator<Item = &'a str>,
) -> Result<(), NackError> {
    let statics: std::collections::HashSet<&str> = statics.collect();
    for name in dynamic {
        if statics.contains(name) {
            return Err(NackError {
                kind: Some(kind),
                name: name.to_string(),
                message: "name already used by static_resources in the bootstrap".into(),
            });
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl ConfigSink for Sink {
    async fn set_clusters(&self, v: Vec<model::Cluster>) -> Result<(), NackError> {
        no_shadowing(
            pylon::ResourceType::Cluster,
            self.static_clusters.iter().map(|c| c.name.as_str()),
            v.iter().map(|c| c.name.as_str()),
        )?;
        let mut all = self.static_clusters.clone();
        all.extend(v);
        self.runtime.set_clusters(all).await
    }

    async fn set_load_assignments(&self, v: Vec<model::LoadAssignment>) -> Result<(), NackError> {
        self.runtime.set_load_assignments(v).await
    }

    async fn set_listeners(&self, v: Vec<model::Listener>) -> Result<(), NackError> {
        no_shadowing(
            pylon::ResourceType::Listener,
            self.static_listeners.iter().map(|l| l.name.as_str()),
            v.iter().map(|l| l.name.as_str()),
        )?;
        let mut all = self.static_listeners.clone();
        all.extend(v);
        self.runtime.set_listeners(all).await
    }

    async fn set_route_configs(&self, v: Vec<model::RouteConfig>) -> Result<(), NackError> {
        self.runtime.set_route_configs(v).await
    }

    /// Rejects a listener whose address another process holds, as Envoy
    /// does, rather than accepting it and failing to apply it later.
    fn check(&self, resource: &model::Decoded) -> Result<(), NackError> {
        if let model::Decoded::Listener(l) = resource {
            crate::listener::probe_bind(l.addr).map_err(|e| NackError {
                kind: Some(pylon::ResourceType::Listener),
                name: l.name.clone(),
                message: format!("cannot bind {}: {e}", l.addr),
            })?;
        }
        Ok(())
    }
}
