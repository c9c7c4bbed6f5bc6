//! The config in force and its reconciliation.
//!
//! Owns the [`Runtime`]: the cluster manager, the RDS route configurations and
//! the listener manager of one proxy, the order in which updates are applied
//! (one at a time), draining, and the read-only views the admin API serves
//! (clusters, listeners, stats, config dump, readiness).
//!
//! Every setter replaces the full set of its kind and is all-or-nothing: it
//! validates everything first and applies nothing on error (the error names
//! the resource, so the xDS client can NACK it). Nothing here is
//! process-global; tests run several runtimes in one process.
//!
//! Does not own the xDS client, the model conversion or the admin server.

mod dump;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::listener::route::RouteManager;
use crate::listener::ListenerManager;
use crate::model::{self, NackError};
use crate::upstream::ClusterManager;

/// Default time connections get to finish when a listener drains.
pub const DEFAULT_DRAIN_TIME: Duration = Duration::from_secs(5);

/// How a [`Runtime`] is built.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Cancelled on shutdown: stops health checkers, accept loops and closes
    /// every connection at once (the graceful path is [`Runtime::drain`]).
    pub shutdown: CancellationToken,
    /// How long draining listeners let connections finish (default 5 s).
    pub drain_time: Duration,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            shutdown: CancellationToken::new(),
            drain_time: DEFAULT_DRAIN_TIME,
        }
    }
}

/// One host as `/clusters` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostView {
    /// Address.
    pub addr: SocketAddr,
    /// Load balancing weight.
    pub weight: u32,
    /// `healthy`, or flags such as `/failed_active_hc/active_hc_timeout`.
    pub health_flags: String,
    /// Connections open now.
    pub cx_active: u64,
    /// Connections opened (attempts included).
    pub cx_total: u64,
    /// Failed connection attempts.
    pub cx_connect_fail: u64,
    /// Requests sent.
    pub rq_total: u64,
    /// Requests in flight.
    pub rq_active: u64,
    /// Outlier detection's success rate of the last interval (percent), when
    /// it had enough requests.
    pub success_rate: Option<f64>,
    /// The same over local-origin results.
    pub local_origin_success_rate: Option<f64>,
}

/// One cluster as `/clusters` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterView {
    /// Name.
    pub name: String,
    /// False for clusters from `static_resources` (see [`Runtime::mark_static_clusters`]).
    pub added_via_api: bool,
    /// Hosts.
    pub hosts: Vec<HostView>,
    /// Cluster stats without the `cluster.<name>.` prefix (`upstream_cx_total`, ...).
    pub stats: Vec<(String, u64)>,
    /// Circuit breaker thresholds (DEFAULT priority).
    pub circuit_breakers: model::CircuitBreakers,
}

/// The config in force.
#[derive(Debug)]
pub struct Runtime {
    opts: RuntimeOptions,
    /// Serialises updates.
    update: tokio::sync::Mutex<()>,
    clusters: ClusterManager,
    routes: RouteManager,
    listeners: ListenerManager,
    configured: AtomicBool,
    ready: AtomicBool,
}

impl Runtime {
    /// An empty runtime.
    pub fn new(opts: RuntimeOptions) -> Arc<Runtime> {
        Arc::new(Runtime {
            clusters: ClusterManager::new(opts.shutdown.clone()),
            routes: RouteManager::default(),
            listeners: ListenerManager::new(opts.shutdown.clone()),
            update: tokio::sync::Mutex::new(()),
            configured: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            opts,
        })
    }

    /// Replaces the set of clusters (CDS and static). A cluster whose model did
    /// not change is untouched; a changed one is swapped for a new version that
    /// keeps the state of the hosts that remain.
    pub async fn set_clusters(
        self: &Arc<Self>,
        clusters: Vec<model::Cluster>,
    ) -> Result<(), NackError> {
        let _g = self.update.lock().await;
        self.clusters.set_clusters(clusters)?;
        self.configured.store(true, Ordering::Release);
        Ok(())
    }

    /// Replaces the set of load assignments (EDS); EDS clusters whose
    /// assignment changed get the new hosts.
    pub async fn set_load_assignments(
        self: &Arc<Self>,
        las: Vec<model::LoadAssignment>,
    ) -> Result<(), NackError> {
        let _g = self.update.lock().await;
        self.clusters.set_load_assignments(las)?;
        Ok(())
    }

    /// Replaces the set of listeners (LDS and static); see [`crate::listener`].
    pub async fn set_listeners(
        self: &Arc<Self>,
        listeners: Vec<model::Listener>,
    ) -> Result<(), NackError> {
        let _g = self.update.lock().await;
        self.listeners.set(
            listeners,
            &self.clusters,
            &self.routes,
            self.opts.drain_time,
        )?;
        Ok(())
    }

    /// Replaces the set of RDS route configurations; the next request on any
    /// connection uses the new version.
    pub async fn set_route_configs(
        self: &Arc<Self>,
        rcs: Vec<model::RouteConfig>,
    ) -> Result<(), NackError> {
        let _g = self.update.lock().await;
        self.routes.set(rcs, &self.clusters)?;
        Ok(())
    }

    /// Records which clusters come from `static_resources`, so that
    /// [`ClusterView::added_via_api`] is false for them (all clusters count as
    /// added via the API otherwise).
    pub fn mark_static_clusters(&self, names: impl IntoIterator<Item = String>) {
        self.clusters.mark_static(names);
    }

    /// Stops accepting on every listener, waits for connections to end (at
    /// most `drain_time`), closes the rest, then stops the health checkers.
    pub async fn drain(&self) {
        // Holding the update lock: no listener can be added meanwhile or after.
        let _g = self.update.lock().await;
        self.listeners.drain_all(self.opts.drain_time).await;
        self.clusters.stop_all();
    }

    /// The clusters in force, with their hosts and stats.
    pub fn clusters_view(&self) -> Vec<ClusterView> {
        self.clusters
            .clusters()
            .iter()
            .map(|c| {
                let prefix_len = "cluster.".len() + c.name().len() + 1;
                let mut stats = Vec::new();
                c.collect_stats(&mut stats);
                let stats = stats
                    .into_iter()
                    .map(|(k, v)| (k.get(prefix_len..).unwrap_or_default().to_owned(), v))
                    .collect();
                let hosts = c
                    .lb()
                    .members()
                    .hosts()
                    .iter()
                    .map(|h| {
                        let (success_rate, local_origin_success_rate) = h.outlier.success_rates();
                        HostView {
                            addr: h.addr(),
                            weight: h.weight(),
                            health_flags: h.health_flags(),
                            cx_active: h.stats.cx_active.get(),
                            cx_total: h.stats.cx_total.get(),
                            cx_connect_fail: h.stats.cx_connect_fail.get(),
                            rq_total: h.stats.rq_total.get(),
                            rq_active: h.stats.rq_active.get(),
                            success_rate,
                            local_origin_success_rate,
                        }
                    })
                    .collect();
                ClusterView {
                    name: c.name().to_owned(),
                    added_via_api: !self.clusters.is_static(c.name()),
                    hosts,
                    stats,
                    circuit_breakers: c.config().circuit_breakers,
                }
            })
            .collect()
    }

    /// Bound listeners: name and actual address (port 0 resolved).
    pub fn listeners_view(&self) -> Vec<(String, SocketAddr)> {
        self.listeners.view()
    }

    /// Every stat, Envoy-named, sorted by name.
    pub fn stats(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let clusters = self.clusters.clusters();
        for c in &clusters {
            c.collect_stats(&mut out);
        }
        out.push((
            "cluster_manager.active_clusters".to_owned(),
            clusters.len() as u64,
        ));
        self.listeners.collect_stats(&mut out);
        out.push((
            "listener_manager.total_listeners_active".to_owned(),
            self.listeners.view().len() as u64,
        ));
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The resources in force, shaped like Envoy's `/config_dump`.
    pub fn config_dump(&self) -> serde_json::Value {
        dump::config_dump(
            &self.clusters,
            &self.listeners.models(),
            &self.routes.configs(),
        )
    }

    /// Envoy's initialisation: false until the clusters were set once and every
    /// cluster is warm (DNS clusters had their first lookups, health-checked
    /// clusters a first check of each host); true from then on. Waiting for
    /// EDS assignments and RDS routes is not done here: the xDS store gives a
    /// cluster or listener only once it is warm or its warming timed out.
    pub fn ready(&self) -> bool {
        if self.ready.load(Ordering::Acquire) {
            return true;
        }
        if !self.configured.load(Ordering::Acquire) {
            return false;
        }
        let warm = self.clusters.clusters().iter().all(|c| c.initialized());
        if warm {
            self.ready.store(true, Ordering::Release);
        }
        warm
    }
}

#[cfg(test)]
pub(crate) mod tests;
