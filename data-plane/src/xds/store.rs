//! The configuration received over xDS, and what of it is in force.
//!
//! [`Store`] keeps, per type, every accepted resource with its version
//! (`held`), and what was last handed to the [`ConfigSink`] (`pushed`). It is
//! free of gRPC: the stream modules feed it validated [`Update`]s (the valid
//! part of a response; rejected names are listed in `keep` so that a full set
//! keeps their previous version) and it calls the sink. Warming follows Envoy:
//!
//! - an EDS cluster is pushed once its load assignment has been pushed (a
//!   changed cluster whose assignment is already held is pushed at once); a
//!   STATIC cluster at once;
//! - a listener is pushed once its RDS route configuration has been pushed
//!   and every cluster it names that exists in CDS is in force in its current
//!   version. A cluster CDS does not know is not waited for: Envoy serves such
//!   a listener and answers 503, and waiting would block on a typo forever;
//! - while a changed cluster or listener warms, the previous version stays in
//!   force; a new one is simply absent;
//! - after [`WARMING_TIMEOUT`] (Envoy's `initial_fetch_timeout`, 15 s),
//!   counted from when the cluster or listener started warming, it is pushed
//!   anyway: an EDS cluster without an assignment has no hosts, a listener
//!   without its routes has no routes. A listener's deadline does not move
//!   when what it waits for (its routes, their clusters) arrives late.
//!
//! The store is the only place that decides warming and its deadline: the
//! runtime uses what the sink is given at once, without a wait of its own
//! (see `upstream::cluster` and `listener`).
//!
//! Assignments and route configurations are kept while a held or pushed
//! cluster or listener names them, so a warming replacement never removes
//! what the version in force uses; then they are dropped.
//!
//! Every sink call carries the complete set of its type. Calls go in
//! make-before-break order: endpoints, clusters, routes, listeners, then the
//! endpoints and routes nothing uses any more. The response's own type goes
//! first: if the sink rejects it, nothing changes (the client may retry
//! without the resource the error names, else NACKs the whole response).
//! A later call failing (the consequence of an earlier, ACKed response) is
//! logged and retried at the next reconcile.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use pylon::ResourceType;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::ConfigSink;
use crate::model::{
    Cluster, Decoded, Discovery, Listener, ListenerKind, LoadAssignment, NackError, RouteConfig,
    RouteSource,
};

/// How long a cluster or listener may warm before it is used anyway
/// (Envoy's default `initial_fetch_timeout`).
pub const WARMING_TIMEOUT: Duration = Duration::from_secs(15);

/// An accepted resource and the version it came with.
#[derive(Debug, Clone, PartialEq)]
struct Held<T> {
    value: T,
    version: String,
}

/// Every accepted resource, by type and name.
#[derive(Debug, Clone, Default)]
struct HeldSet {
    clusters: BTreeMap<String, Held<Cluster>>,
    endpoints: BTreeMap<String, Held<LoadAssignment>>,
    listeners: BTreeMap<String, Held<Listener>>,
    routes: BTreeMap<String, Held<RouteConfig>>,
}

/// What the sink was last given, by type and name.
#[derive(Debug, Clone, Default)]
struct Pushed {
    clusters: BTreeMap<String, Cluster>,
    endpoints: BTreeMap<String, LoadAssignment>,
    listeners: BTreeMap<String, Listener>,
    routes: BTreeMap<String, RouteConfig>,
}

/// One validated response, as a change to one type.
#[derive(Debug, Clone)]
pub struct Update {
    /// The type.
    pub kind: ResourceType,
    /// The resources are the full set: anything else of this type is removed
    /// (SotW CDS and LDS), except the names in `keep`.
    pub full_set: bool,
    /// Added or changed resources, with their versions.
    pub upserts: Vec<(Decoded, String)>,
    /// Names removed (delta).
    pub removed: Vec<String>,
    /// Names the response carried but that were rejected: the held version,
    /// if any, stays (a full set does not remove them).
    pub keep: BTreeSet<String>,
}

/// Held config, pushed config and warming deadlines. See the module docs.
#[derive(Debug, Default)]
pub struct Store {
    held: HeldSet,
    live: InForce,
}

/// What is in force, and since when what is not yet has been warming.
#[derive(Debug, Default)]
struct InForce {
    pushed: Pushed,
    /// Clusters and listeners whose held version is not in force yet, since when.
    warming: BTreeMap<(ResourceType, String), Instant>,
}

impl Store {
    /// Applies a validated update. `Err` (the sink rejected this type's new
    /// set) means NACK: nothing was changed. `Ok` carries the errors of the
    /// consequent pushes of other types, which do not NACK this response.
    pub async fn apply(
        &mut self,
        update: &Update,
        sink: &dyn ConfigSink,
        now: Instant,
    ) -> Result<Vec<NackError>, NackError> {
        let kind = update.kind;
        let mut candidate = self.held.clone();
        apply_to(&mut candidate, update);
        self.live.push(kind, &candidate, sink, now).await?;
        self.held = candidate;
        Ok(self.reconcile(sink, now).await)
    }

    /// Pushes whatever became ready (after an update, or when a warming
    /// deadline passed), in make-before-break order, then drops assignments
    /// and route configurations nothing names. Returns the sink's errors.
    pub async fn reconcile(&mut self, sink: &dyn ConfigSink, now: Instant) -> Vec<NackError> {
        let mut errors = Vec::new();
        for kind in [
            ResourceType::Endpoint,
            ResourceType::Cluster,
            ResourceType::Route,
            ResourceType::Listener,
            ResourceType::Endpoint,
            ResourceType::Route,
        ] {
            if let Err(e) = self.live.push(kind, &self.held, sink, now).await {
                warn!(r#type = kind.short(), error = %e, "applying an accepted update failed; will retry");
                errors.push(e);
            }
        }
        self.prune();
        self.track_warming(now);
        errors
    }

    /// Drops assignments and route configurations that neither a held nor a
    /// pushed cluster or listener names.
    fn prune(&mut self) {
        let eds = eds_names(&self.held.clusters, &self.live.pushed.clusters);
        self.held.endpoints.retain(|name, _| eds.contains(name));
        let rds = rds_names(&self.held.listeners, &self.live.pushed.listeners);
        self.held.routes.retain(|name, _| rds.contains(name));
    }

    /// Starts the clock for clusters and listeners whose held version is not
    /// in force, and stops it for the others.
    fn track_warming(&mut self, now: Instant) {
        let mut warming = BTreeMap::new();
        for (name, h) in &self.held.clusters {
            if self.live.pushed.clusters.get(name) != Some(&h.value) {
                let key = (ResourceType::Cluster, name.clone());
                let since = self.live.warming.get(&key).copied().unwrap_or(now);
                warming.insert(key, since);
            }
        }
        for (name, h) in &self.held.listeners {
            if self.live.pushed.listeners.get(name) != Some(&h.value) {
                let key = (ResourceType::Listener, name.clone());
                let since = self.live.warming.get(&key).copied().unwrap_or(now);
                warming.insert(key, since);
            }
        }
        self.live.warming = warming;
    }

    /// When the next warming resource times out, if any is warming.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        self.live
            .warming
            .values()
            .map(|since| *since + WARMING_TIMEOUT)
            .filter(|deadline| *deadline > now)
            .min()
    }

    /// Whether nothing is warming (or everything warming timed out).
    pub fn is_warm(&self, now: Instant) -> bool {
        self.next_deadline(now).is_none()
    }

    /// The load assignment names to subscribe to: those of held or pushed
    /// EDS clusters.
    pub fn eds_names(&self) -> BTreeSet<String> {
        eds_names(&self.held.clusters, &self.live.pushed.clusters)
    }

    /// The route configuration names to subscribe to: those of held or
    /// pushed RDS listeners.
    pub fn rds_names(&self) -> BTreeSet<String> {
        rds_names(&self.held.listeners, &self.live.pushed.listeners)
    }

    /// The names to subscribe to for `kind` (empty for the wildcard types).
    pub fn names(&self, kind: ResourceType) -> BTreeSet<String> {
        match kind {
            ResourceType::Endpoint => self.eds_names(),
            ResourceType::Route => self.rds_names(),
            ResourceType::Cluster | ResourceType::Listener => BTreeSet::new(),
        }
    }

    /// The versions of the held resources of `kind`, by name (delta's
    /// `initial_resource_versions`).
    pub fn versions(&self, kind: ResourceType) -> BTreeMap<String, String> {
        fn v<T>(m: &BTreeMap<String, Held<T>>) -> BTreeMap<String, String> {
            m.iter()
                .map(|(n, h)| (n.clone(), h.version.clone()))
                .collect()
        }
        match kind {
            ResourceType::Cluster => v(&self.held.clusters),
            ResourceType::Endpoint => v(&self.held.endpoints),
            ResourceType::Listener => v(&self.held.listeners),
            ResourceType::Route => v(&self.held.routes),
        }
    }
}

/// Gives `eff` to the sink through `set` when it differs from what was last
/// given (`pushed`), and records it once the sink took it.
async fn replace<T, F, Fut>(
    pushed: &mut BTreeMap<String, T>,
    eff: BTreeMap<String, T>,
    what: &'static str,
    set: F,
) -> Result<(), NackError>
where
    T: PartialEq + Clone,
    F: FnOnce(Vec<T>) -> Fut,
    Fut: std::future::Future<Output = Result<(), NackError>>,
{
    if eff != *pushed {
        debug!(n = eff.len(), "{what}");
        set(eff.values().cloned().collect()).await?;
        *pushed = eff;
    }
    Ok(())
}

impl InForce {
    /// Computes what of `kind` should be in force given `held`, and gives it
    /// to the sink if it differs from what is.
    async fn push(
        &mut self,
        kind: ResourceType,
        held: &HeldSet,
        sink: &dyn ConfigSink,
        now: Instant,
    ) -> Result<(), NackError> {
        match kind {
            ResourceType::Endpoint => {
                let eff = self.effective_endpoints(held);
                replace(
                    &mut self.pushed.endpoints,
                    eff,
                    "set_load_assignments",
                    |v| sink.set_load_assignments(v),
                )
                .await
            }
            ResourceType::Cluster => {
                let eff = self.effective_clusters(held, now);
                replace(&mut self.pushed.clusters, eff, "set_clusters", |v| {
                    sink.set_clusters(v)
                })
                .await
            }
            ResourceType::Route => {
                let eff = self.effective_routes(held);
                replace(&mut self.pushed.routes, eff, "set_route_configs", |v| {
                    sink.set_route_configs(v)
                })
                .await
            }
            ResourceType::Listener => {
                let eff = self.effective_listeners(held, now);
                replace(&mut self.pushed.listeners, eff, "set_listeners", |v| {
                    sink.set_listeners(v)
                })
                .await
            }
        }
    }

    fn effective_endpoints(&self, held: &HeldSet) -> BTreeMap<String, LoadAssignment> {
        let wanted = eds_names(&held.clusters, &self.pushed.clusters);
        held.endpoints
            .iter()
            .filter(|(name, _)| wanted.contains(*name))
            .map(|(name, h)| (name.clone(), h.value.clone()))
            .collect()
    }

    fn effective_clusters(&self, held: &HeldSet, now: Instant) -> BTreeMap<String, Cluster> {
        let mut eff = BTreeMap::new();
        for (name, h) in &held.clusters {
            let ready = match &h.value.discovery {
                // A DNS cluster warms in the runtime, on its first lookups.
                Discovery::Static(_) | Discovery::Dns(_) => true,
                Discovery::Eds { service_name } => {
                    self.pushed.endpoints.contains_key(service_name)
                        || self.expired(ResourceType::Cluster, name, now)
                }
            };
            if ready {
                eff.insert(name.clone(), h.value.clone());
            } else if let Some(old) = self.pushed.clusters.get(name) {
                eff.insert(name.clone(), old.clone());
            }
        }
        eff
    }

    fn effective_routes(&self, held: &HeldSet) -> BTreeMap<String, RouteConfig> {
        let wanted = rds_names(&held.listeners, &self.pushed.listeners);
        held.routes
            .iter()
            .filter(|(name, _)| wanted.contains(*name))
            .map(|(name, h)| (name.clone(), h.value.clone()))
            .collect()
    }

    fn effective_listeners(&self, held: &HeldSet, now: Instant) -> BTreeMap<String, Listener> {
        let mut eff = BTreeMap::new();
        for (name, h) in &held.listeners {
            if self.listener_ready(&h.value, held, now) {
                eff.insert(name.clone(), h.value.clone());
            } else if let Some(old) = self.pushed.listeners.get(name) {
                eff.insert(name.clone(), old.clone());
            }
        }
        eff
    }

    fn listener_ready(&self, l: &Listener, held: &HeldSet, now: Instant) -> bool {
        if self.expired(ResourceType::Listener, &l.name, now) {
            return true;
        }
        let mut clusters: Vec<&str> = Vec::new();
        match &l.kind {
            ListenerKind::Tcp(t) => clusters.push(&t.cluster),
            ListenerKind::Http(h) => {
                let routes = match &h.routes {
                    RouteSource::Inline(rc) => rc,
                    RouteSource::Rds(name) => match self.pushed.routes.get(name) {
                        Some(rc) => rc,
                        None => return false,
                    },
                };
                clusters.extend(route_clusters(routes));
            }
        }
        clusters.into_iter().all(|c| match held.clusters.get(c) {
            // Not in CDS: nothing to wait for (requests get 503).
            None => true,
            Some(h) => self.pushed.clusters.get(c) == Some(&h.value),
        })
    }

    fn expired(&self, kind: ResourceType, name: &str, now: Instant) -> bool {
        self.warming
            .get(&(kind, name.to_string()))
            .is_some_and(|since| now.saturating_duration_since(*since) >= WARMING_TIMEOUT)
    }
}

/// Applies `update` to `held` (no checks: the update was validated).
fn apply_to(held: &mut HeldSet, update: &Update) {
    fn merge<T>(
        map: &mut BTreeMap<String, Held<T>>,
        full_set: bool,
        upserts: Vec<(String, T, String)>,
        removed: &[String],
        keep: &BTreeSet<String>,
    ) {
        if full_set {
            map.retain(|name, _| keep.contains(name));
        }
        for name in removed {
            map.remove(name);
        }
        for (name, value, version) in upserts {
            map.insert(name, Held { value, version });
        }
    }
    let Update {
        kind,
        full_set,
        upserts,
        removed,
        keep,
    } = update;
    let (kind, full_set) = (*kind, *full_set);
    let mut clusters = Vec::new();
    let mut endpoints = Vec::new();
    let mut listeners = Vec::new();
    let mut routes = Vec::new();
    for (resource, version) in upserts {
        let version = version.clone();
        match resource {
            Decoded::Cluster(c) => clusters.push((c.name.clone(), c.clone(), version)),
            Decoded::LoadAssignment(l) => endpoints.push((l.name.clone(), l.clone(), version)),
            Decoded::Listener(l) => listeners.push((l.name.clone(), l.clone(), version)),
            Decoded::RouteConfig(r) => routes.push((r.name.clone(), r.clone(), version)),
        }
    }
    match kind {
        ResourceType::Cluster => merge(&mut held.clusters, full_set, clusters, removed, keep),
        ResourceType::Endpoint => merge(&mut held.endpoints, full_set, endpoints, removed, keep),
        ResourceType::Listener => merge(&mut held.listeners, full_set, listeners, removed, keep),
        ResourceType::Route => merge(&mut held.routes, full_set, routes, removed, keep),
    }
}

fn eds_names(
    held: &BTreeMap<String, Held<Cluster>>,
    pushed: &BTreeMap<String, Cluster>,
) -> BTreeSet<String> {
    held.values()
        .map(|h| &h.value)
        .chain(pushed.values())
        .filter_map(|c| match &c.discovery {
            Discovery::Eds { service_name } => Some(service_name.clone()),
            Discovery::Static(_) | Discovery::Dns(_) => None,
        })
        .collect()
}

fn rds_names(
    held: &BTreeMap<String, Held<Listener>>,
    pushed: &BTreeMap<String, Listener>,
) -> BTreeSet<String> {
    held.values()
        .map(|h| &h.value)
        .chain(pushed.values())
        .filter_map(|l| match &l.kind {
            ListenerKind::Http(h) => match &h.routes {
                RouteSource::Rds(name) => Some(name.clone()),
                RouteSource::Inline(_) => None,
            },
            ListenerKind::Tcp(_) => None,
        })
        .collect()
}

fn route_clusters(rc: &RouteConfig) -> impl Iterator<Item = &str> {
    rc.virtual_hosts
        .iter()
        .flat_map(|vh| vh.routes.iter())
        .map(|r| r.action.cluster.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::testing::{cla, eds, http_rds, route_config, tcp, Call, FakeSink};

    fn update(kind: ResourceType, full_set: bool, items: Vec<Decoded>) -> Update {
        Update {
            kind,
            full_set,
            upserts: items.into_iter().map(|d| (d, "1".to_string())).collect(),
            removed: vec![],
            keep: BTreeSet::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn eds_cluster_warms_until_its_assignment() {
        let sink = FakeSink::default();
        let mut s = Store::default();
        let t0 = Instant::now();
        s.apply(
            &update(
                ResourceType::Cluster,
                true,
                vec![Decoded::Cluster(eds("a"))],
            ),
            &sink,
            t0,
        )
        .await
        .unwrap();
        // Warming: nothing pushed yet, but subscribed.
        assert_eq!(sink.take(), vec![]);
        assert_eq!(s.eds_names(), BTreeSet::from(["a".to_string()]));
        assert!(!s.is_warm(t0));
        // A listener using it waits too.
        s.apply(
            &update(
                ResourceType::Listener,
                true,
                vec![Decoded::Listener(tcp("l", "a"))],
            ),
            &sink,
            t0,
        )
        .await
        .unwrap();
        assert_eq!(sink.take(), vec![]);
        s.apply(
            &update(
                ResourceType::Endpoint,
                false,
                vec![Decoded::LoadAssignment(cla("a", 1))],
            ),
            &sink,
            t0,
        )
        .await
        .unwrap();
        assert_eq!(
            sink.take(),
            vec![
                Call::LoadAssignments(vec!["a".into()]),
                Call::Clusters(vec!["a".into()]),
                Call::Listeners(vec!["l".into()]),
            ]
        );
        assert!(s.is_warm(t0));
    }

    #[tokio::test(start_paused = true)]
    async fn listener_waits_for_rds_then_times_out() {
        let sink = FakeSink::default();
        let mut s = Store::default();
        let t0 = Instant::now();
        s.apply(
            &update(
                ResourceType::Listener,
                true,
                vec![Decoded::Listener(http_rds("front", "r"))],
            ),
            &sink,
            t0,
        )
        .await
        .unwrap();
        assert_eq!(sink.take(), vec![]);
        assert_eq!(s.rds_names(), BTreeSet::from(["r".to_string()]));
        assert_eq!(s.next_deadline(t0), Some(t0 + WARMING_TIMEOUT));
        // Not yet.
        assert!(s
            .reconcile(&sink, t0 + Duration::from_secs(14))
            .await
            .is_empty());
        assert_eq!(sink.take(), vec![]);
        // Timed out: served without its routes.
        s.reconcile(&sink, t0 + WARMING_TIMEOUT).await;
        assert_eq!(sink.take(), vec![Call::Listeners(vec!["front".into()])]);
        assert!(s.is_warm(t0 + WARMING_TIMEOUT));
    }

    #[tokio::test(start_paused = true)]
    async fn changed_listener_keeps_old_version_while_warming() {
        let sink = FakeSink::default();
        let mut s = Store::default();
        let t0 = Instant::now();
        s.apply(
            &update(
                ResourceType::Listener,
                true,
                vec![Decoded::Listener(http_rds("front", "r1"))],
            ),
            &sink,
            t0,
        )
        .await
        .unwrap();
        s.apply(
            &update(
                ResourceType::Route,
                false,
                vec![Decoded::RouteConfig(route_config("r1", "c"))],
            ),
            &sink,
            t0,
        )
        .await
        .unwrap();
        assert_eq!(
            sink.take(),
            vec![
                Call::RouteConfigs(vec!["r1".into()]),
                Call::Listeners(vec!["front".into()])
            ]
        );
        // Switch to r2: the old listener (and r1) stay until r2 arrives.
        s.apply(
            &update(
                ResourceType::Listener,
                true,
                vec![Decoded::Listener(http_rds("front", "r2"))],
            ),
            &sink,
            t0,
        )
        .await
        .unwrap();
        assert_eq!(sink.take(), vec![]);
        assert_eq!(
            s.rds_names(),
            BTreeSet::from(["r1".to_string(), "r2".to_string()])
        );
        s.apply(
            &update(
                ResourceType::Route,
                false,
                vec![Decoded::RouteConfig(route_config("r2", "c"))],
            ),
            &sink,
            t0,
        )
        .await
        .unwrap();
        assert_eq!(
            sink.take(),
            vec![
                Call::RouteConfigs(vec!["r1".into(), "r2".into()]),
                Call::Listeners(vec!["front".into()]),
                Call::RouteConfigs(vec!["r2".into()]),
            ]
        );
        assert_eq!(s.rds_names(), BTreeSet::from(["r2".to_string()]));
        assert_eq!(s.versions(ResourceType::Route).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn rejected_own_set_changes_nothing() {
        let sink = FakeSink::default();
        let mut s = Store::default();
        let t0 = Instant::now();
        let static_cluster = |name: &str| Cluster {
            discovery: Discovery::Static(cla(name, 1)),
            ..eds(name)
        };
        s.apply(
            &update(
                ResourceType::Cluster,
                true,
                vec![Decoded::Cluster(static_cluster("a"))],
            ),
            &sink,
            t0,
        )
        .await
        .unwrap();
        assert_eq!(sink.take(), vec![Call::Clusters(vec!["a".into()])]);
        sink.reject(
            ResourceType::Cluster,
            NackError {
                kind: Some(pylon::ResourceType::Cluster),
                name: "b".into(),
                message: "no".into(),
            },
        );
        let err = s
            .apply(
                &update(
                    ResourceType::Cluster,
                    true,
                    vec![Decoded::Cluster(static_cluster("b"))],
                ),
                &sink,
                t0,
            )
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "cluster b: no");
        assert_eq!(
            s.versions(ResourceType::Cluster).keys().collect::<Vec<_>>(),
            ["a"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn removed_cluster_drops_its_assignment_after_it() {
        let sink = FakeSink::default();
        let mut s = Store::default();
        let t0 = Instant::now();
        s.apply(
            &update(
                ResourceType::Cluster,
                true,
                vec![Decoded::Cluster(eds("a"))],
            ),
            &sink,
            t0,
        )
        .await
        .unwrap();
        s.apply(
            &update(
                ResourceType::Endpoint,
                false,
                vec![Decoded::LoadAssignment(cla("a", 2))],
            ),
            &sink,
            t0,
        )
        .await
        .unwrap();
        sink.take();
        s.apply(&update(ResourceType::Cluster, true, vec![]), &sink, t0)
            .await
            .unwrap();
        assert_eq!(
            sink.take(),
            vec![Call::Clusters(vec![]), Call::LoadAssignments(vec![])]
        );
        assert!(s.eds_names().is_empty());
        assert!(s.versions(ResourceType::Endpoint).is_empty());
    }
}
