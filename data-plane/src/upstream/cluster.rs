//! Clusters and the cluster manager.
//!
//! Owns: one [`Cluster`] per cluster version in force (config, hosts, load
//! balancer, health checkers, stats), the [`ClusterSlot`] through which
//! listeners and routes reach the current version of a cluster by name without
//! a map lookup or a lock, and the [`ClusterManager`] that reconciles the set of
//! clusters and load assignments.
//!
//! Invariants:
//! - a cluster whose model did not change is kept as is; a changed one is
//!   replaced by a new version that reuses the hosts (health, stats, idle
//!   connections) of the old one for every address that remains, and the
//!   cluster's stats; the swap is one `ArcSwap` store;
//! - an EDS update changes the hosts of the current version in place (new load
//!   balancer snapshot, checkers started for new hosts and stopped for removed ones);
//!   so does a DNS answer, for a STRICT_DNS or LOGICAL_DNS cluster, whose
//!   version runs its own lookups (`upstream::dns`) until it is replaced;
//! - established connections are never touched by any of this.
//!
//! Circuit breakers: the cluster's `max_connections` is checked and taken in
//! one atomic step on its `upstream_cx_active` gauge when a connection is
//! reserved ([`Cluster::reserve_cx`]), before connecting; the request limits
//! are applied by `pool`, `max_retries` by [`Cluster::try_retry`]. No lock on
//! any of these paths.
//!
//! Health and the host set: the active health checker (`health`) and outlier
//! detection (`outlier`) flip host flags; this module owns what the host set
//! does about them. After each check [`Cluster::after_check`] refreshes the
//! load balancer's healthy set, lets a passed check return a host ejected by
//! outlier detection, and drops a host that left the endpoints once its
//! check fails: with `ignore_health_on_host_removal` false (Envoy's default),
//! an EDS update keeps a removed host that passes its active health checks,
//! flagged `/pending_dynamic_removal` and still taking traffic; with it true,
//! or without a health check, a removed host leaves at once.
//!
//! Does not own connections to hosts beyond opening them ([`Cluster::connect`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwapOption;
use tokio::net::TcpStream;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::model::{self, Discovery, Endpoint, LoadAssignment, NackError};
use crate::stats::{Gauge, StatGroup};
use crate::upstream::connect::{self, ConnectError, UpstreamCx};
use crate::upstream::dns;
use crate::upstream::health::{run_checker, CheckObserver, CheckerCtx, Probe};
use crate::upstream::host::{Host, FAILED_OUTLIER_CHECK, PENDING_DYNAMIC_REMOVAL};
use crate::upstream::lb::LoadBalancer;
use crate::upstream::outlier::{Detector, Report};
use crate::upstream::pool::{self, PoolSet};
use crate::upstream::stats::ClusterStats;

/// A retry's place under the cluster's `max_retries`, held from the decision
/// to retry until the retried attempt ends.
#[derive(Debug)]
pub struct RetryGuard {
    cluster: Arc<Cluster>,
}

impl Drop for RetryGuard {
    fn drop(&mut self) {
        self.cluster.retries_active.dec();
    }
}

/// One version of a cluster.
#[derive(Debug)]
pub struct Cluster {
    config: model::Cluster,
    stats: Arc<ClusterStats>,
    lb: Arc<LoadBalancer>,
    checker: Option<CheckerCtx>,
    checkers: Mutex<HashMap<SocketAddr, DropGuard>>,
    /// Idle HTTP connections per host, shared by every version of the cluster.
    pools: Arc<PoolSet>,
    /// Serialises changes of the host set (EDS updates, removals after a
    /// failed check of a host pending removal).
    host_set: Mutex<()>,
    outlier: Option<Arc<Detector>>,
    /// Retries outstanding (the `max_retries` circuit breaker).
    retries_active: Gauge,
    /// Parent of this version's checker tokens.
    token: CancellationToken,
    /// The endpoints are known: given, or (DNS) the first lookups are done.
    endpoints_known: AtomicBool,
    initialized: AtomicBool,
    /// A DNS cluster's last answer per name (see `upstream::dns`), handed to
    /// the next version of the cluster.
    dns_answers: Mutex<Vec<Option<Vec<IpAddr>>>>,
}

impl Cluster {
    /// Builds a cluster version. `endpoints` is `None` for an EDS cluster whose
    /// load assignment has not arrived. `previous` is the version it replaces:
    /// its hosts are reused for addresses that remain.
    pub fn new(
        config: model::Cluster,
        stats: Arc<ClusterStats>,
        endpoints: Option<&[Endpoint]>,
        previous: Option<&Cluster>,
        parent: &CancellationToken,
    ) -> Arc<Cluster> {
        // A DNS cluster starts from the previous version's answers when it
        // resolves the same names; its own lookups start at once.
        let dns_seed = match (&config.discovery, previous) {
            (Discovery::Dns(d), Some(p)) => match &p.config.discovery {
                Discovery::Dns(pd) if pd.targets == d.targets => Some((
                    p.dns_answers
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .clone(),
                    p.endpoints_known.load(Ordering::Acquire),
                )),
                _ => None,
            },
            _ => None,
        };
        let dns_endpoints = match (&config.discovery, &dns_seed) {
            (Discovery::Dns(d), Some((answers, true))) => Some(dns::endpoints(d, answers)),
            _ => None,
        };
        let endpoints = endpoints.or(dns_endpoints.as_deref());
        let health_checked = config.health_check.is_some();
        let prev_hosts: HashMap<SocketAddr, Arc<Host>> = previous
            .map(|p| {
                p.lb.members()
                    .hosts()
                    .iter()
                    .map(|h| (h.addr(), h.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let prev_checked = previous.is_some_and(|p| p.config.health_check.is_some());
        let outlier_detected = config.outlier_detection.is_some();
        let hosts = reuse_hosts(endpoints.unwrap_or(&[]), &prev_hosts, health_checked, |h| {
            // A version starts from its endpoints: nothing is pending removal.
            h.clear_flag(PENDING_DYNAMIC_REMOVAL);
            if health_checked && !prev_checked {
                // A cluster that gains a health check: its hosts start over.
                h.reset_for_health_check();
            } else if !health_checked {
                h.clear_health();
            }
            if !outlier_detected {
                h.clear_flag(FAILED_OUTLIER_CHECK);
                h.outlier.clear();
            }
        });
        // Pools exist before their hosts can be picked.
        let pools = previous.map_or_else(PoolSet::new, |p| p.pools.clone());
        pools.add(&hosts);
        let start = rand::random::<u32>() as usize;
        let lb = Arc::new(LoadBalancer::new(
            hosts.clone(),
            config.healthy_panic_threshold,
            start,
        ));
        let outlier = config.outlier_detection.as_deref().map(|od| {
            Arc::new(Detector::new(
                od.clone(),
                stats.clone(),
                Arc::downgrade(&lb),
            ))
        });
        // An EDS cluster given without its assignment is not waited for
        // here: the xDS store gives a cluster only once its assignment is in
        // force or its warming timed out.
        let endpoints_known = endpoints.is_some() || !matches!(config.discovery, Discovery::Dns(_));
        let cluster = Arc::new_cyclic(|me: &std::sync::Weak<Cluster>| {
            let observer: std::sync::Weak<dyn CheckObserver> = me.clone();
            let checker = config.health_check.as_ref().map(|hc| CheckerCtx {
                cfg: Arc::new(hc.clone()),
                probe: Probe::new(hc, &config.name),
                stats: stats.clone(),
                observer,
            });
            Cluster {
                config,
                stats,
                lb,
                checker,
                checkers: Mutex::new(HashMap::new()),
                pools,
                host_set: Mutex::new(()),
                outlier,
                retries_active: Gauge::default(),
                token: parent.child_token(),
                endpoints_known: AtomicBool::new(endpoints_known),
                initialized: AtomicBool::new(false),
                dns_answers: Mutex::new(
                    dns_seed
                        .as_ref()
                        .map(|(a, _)| a.clone())
                        .unwrap_or_default(),
                ),
            }
        });
        if let Some(d) = &cluster.outlier {
            tokio::spawn(d.clone().run(cluster.token.child_token()));
        }
        // Hosts the previous version had and this one has not lose their pools.
        cluster.pools.retain(&hosts);
        cluster.sync_checkers(&hosts);
        if let Discovery::Dns(d) = &cluster.config.discovery {
            tokio::spawn(dns::run(
                Arc::downgrade(&cluster),
                (**d).clone(),
                dns_seed.map(|(a, _)| a).unwrap_or_default(),
                cluster.token.child_token(),
            ));
        }
        cluster
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The model this version was built from.
    pub fn config(&self) -> &model::Cluster {
        &self.config
    }

    /// The cluster's stats (shared by every version of the cluster).
    pub fn stats(&self) -> &Arc<ClusterStats> {
        &self.stats
    }

    /// The load balancer.
    pub fn lb(&self) -> &LoadBalancer {
        &self.lb
    }

    /// The hosts' pools of idle HTTP connections.
    #[inline]
    pub fn pools(&self) -> &PoolSet {
        &self.pools
    }

    /// What taking an HTTP connection needs of the cluster: its stats,
    /// circuit breakers and `connect_timeout`.
    #[inline]
    pub fn pool_limits(&self) -> pool::Limits<'_> {
        pool::Limits {
            stats: &self.stats,
            breakers: self.config.circuit_breakers,
            connect_timeout: self.config.connect_timeout,
        }
    }

    /// The next host to use; `None` (counted in `upstream_cx_none_healthy`)
    /// when there is none.
    #[inline]
    pub fn pick(&self) -> Option<Arc<Host>> {
        let h = self.lb.pick();
        if h.is_none() {
            self.stats.upstream_cx_none_healthy.inc();
        }
        h
    }

    /// The next host, avoiding the hosts in `tried` while the load balancer
    /// offers another within `repicks` more picks; else the last one picked.
    pub fn pick_avoiding(&self, tried: &[SocketAddr], repicks: usize) -> Option<Arc<Host>> {
        let mut host = self.pick()?;
        for _ in 0..repicks {
            if !tried.contains(&host.addr()) {
                break;
            }
            match self.lb.pick() {
                Some(h) => host = h,
                None => break,
            }
        }
        Some(host)
    }

    /// Tells outlier detection, if the cluster has it, what an attempt to
    /// `host` gave.
    #[inline]
    pub fn report(&self, host: &Host, r: Report) {
        if let Some(d) = &self.outlier {
            d.report(host, r);
        }
    }

    /// A place for one more retry within the cluster's `max_retries`, or
    /// `None` (the caller counts the overflow).
    pub fn try_retry(self: &Arc<Self>) -> Option<RetryGuard> {
        let max = u64::from(self.config.circuit_breakers.max_retries);
        self.retries_active.try_inc(max).then(|| RetryGuard {
            cluster: self.clone(),
        })
    }

    /// A place for one more connection to `host` within the cluster's
    /// `max_connections`, or `None` (the caller counts the overflow); see
    /// [`connect::reserve`].
    pub fn reserve_cx(&self, host: &Arc<Host>, at_least_one: bool) -> Option<UpstreamCx> {
        connect::reserve(
            &self.stats,
            self.config.circuit_breakers.max_connections,
            host,
            at_least_one,
        )
    }

    /// Opens a TCP connection to `host` within `connect_timeout` if
    /// `max_connections` allows it (else [`ConnectError::Overflow`], counted in
    /// `upstream_cx_overflow`): what the TCP proxy does.
    pub async fn connect(&self, host: &Arc<Host>) -> Result<(TcpStream, UpstreamCx), ConnectError> {
        let Some(cx) = self.reserve_cx(host, false) else {
            self.stats.upstream_cx_overflow.inc();
            return Err(ConnectError::Overflow);
        };
        self.connect_reserved(cx).await
    }

    /// Opens the connection `cx` reserved, within `connect_timeout`; see
    /// [`connect::open`].
    pub async fn connect_reserved(
        &self,
        cx: UpstreamCx,
    ) -> Result<(TcpStream, UpstreamCx), ConnectError> {
        connect::open(cx, self.config.connect_timeout).await
    }

    /// Replaces the hosts (an EDS update, or a DNS answer), keeping the state
    /// of hosts that remain. A health-checked cluster without
    /// `ignore_health_on_host_removal` keeps a removed host that its checks
    /// have not failed, as `/pending_dynamic_removal`, until they do (see
    /// [`Cluster::after_check`]).
    pub fn set_endpoints(&self, endpoints: &[Endpoint]) {
        let _g = self.host_set.lock().unwrap_or_else(PoisonError::into_inner);
        let members = self.lb.members();
        let prev: HashMap<SocketAddr, Arc<Host>> = members
            .hosts()
            .iter()
            .map(|h| (h.addr(), h.clone()))
            .collect();
        // A host added back is no longer pending removal.
        let mut hosts = reuse_hosts(endpoints, &prev, self.checker.is_some(), |h| {
            h.clear_flag(PENDING_DYNAMIC_REMOVAL)
        });
        if self.checker.is_some() && !self.config.ignore_health_on_host_removal {
            let kept: HashSet<SocketAddr> = hosts.iter().map(|h| h.addr()).collect();
            for h in members.hosts() {
                if !kept.contains(&h.addr()) && !h.failed_active_hc() {
                    h.set_flag(PENDING_DYNAMIC_REMOVAL);
                    hosts.push(h.clone());
                }
            }
        }
        self.pools.add(&hosts);
        self.lb.set_hosts(hosts.clone());
        self.pools.retain(&hosts);
        self.sync_checkers(&hosts);
        if !matches!(self.config.discovery, Discovery::Dns(_)) {
            // A DNS cluster is known once every name was looked up (`dns`).
            self.endpoints_known.store(true, Ordering::Release);
        }
    }

    /// Records that the cluster's endpoints are known (a DNS cluster's first
    /// lookups are done), which lets it finish warming.
    pub fn mark_endpoints_known(&self) {
        self.endpoints_known.store(true, Ordering::Release);
    }

    /// Records a DNS cluster's answers, for the next version of the cluster.
    pub(crate) fn set_dns_answers(&self, answers: &[Option<Vec<IpAddr>>]) {
        *self
            .dns_answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = answers.to_vec();
    }

    /// Takes `host` out of the host set and stops its checker.
    fn remove_host(&self, host: &Arc<Host>) {
        let _g = self.host_set.lock().unwrap_or_else(PoisonError::into_inner);
        let members = self.lb.members();
        if !members.hosts().iter().any(|h| Arc::ptr_eq(h, host)) {
            return;
        }
        let hosts: Vec<Arc<Host>> = members
            .hosts()
            .iter()
            .filter(|h| !Arc::ptr_eq(h, host))
            .cloned()
            .collect();
        self.lb.set_hosts(hosts.clone());
        self.pools.retain(&hosts);
        self.checkers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&host.addr());
        tracing::info!(cluster = self.name(), host = %host.addr(), "removed host failed its health check: dropped");
    }

    /// Starts checkers for hosts that have none, stops those of hosts that left.
    fn sync_checkers(&self, hosts: &[Arc<Host>]) {
        let Some(ctx) = &self.checker else { return };
        let mut checkers = self.checkers.lock().unwrap_or_else(PoisonError::into_inner);
        let wanted: HashSet<SocketAddr> = hosts.iter().map(|h| h.addr()).collect();
        checkers.retain(|addr, _| wanted.contains(addr));
        for h in hosts {
            if checkers.contains_key(&h.addr()) {
                continue;
            }
            let token = self.token.child_token();
            tokio::spawn(run_checker(h.clone(), ctx.clone(), token.clone()));
            checkers.insert(h.addr(), token.drop_guard());
        }
    }

    /// Stops this version's health checkers (the version was replaced or removed).
    pub fn stop(&self) {
        self.token.cancel();
    }

    /// The part of Envoy's cluster warming that happens after a cluster is
    /// given: a DNS cluster waits for its first lookups (each bounded by the
    /// query timeout, failed or not), a health-checked cluster for the first
    /// check of each of its hosts. Waiting for an EDS assignment is not
    /// done here but by the xDS store, which owns that timeout. Latches once
    /// true.
    pub fn initialized(&self) -> bool {
        if self.initialized.load(Ordering::Acquire) {
            return true;
        }
        let done = if !self.endpoints_known.load(Ordering::Acquire) {
            false
        } else if self.checker.is_some() {
            self.lb
                .members()
                .hosts()
                .iter()
                .all(|h| h.first_check_done())
        } else {
            true
        };
        if done {
            self.initialized.store(true, Ordering::Release);
        }
        done
    }

    /// Appends the `cluster.<name>.` stats, computed gauges included.
    pub fn collect_stats(&self, out: &mut Vec<(String, u64)>) {
        let prefix = format!("cluster.{}.", self.config.name);
        let mut own = Vec::new();
        self.stats.collect(&prefix, &mut own);
        let members = self.lb.members();
        if self.outlier.is_some() {
            let ejected = members.hosts().iter().filter(|h| h.is_ejected()).count();
            own.push((
                format!("{prefix}outlier_detection.ejections_active"),
                ejected as u64,
            ));
        } else {
            // Envoy has these stats only for clusters that detect outliers.
            own.retain(|(k, _)| !k[prefix.len()..].starts_with("outlier_detection."));
        }
        out.append(&mut own);
        let total = members.hosts().len() as u64;
        let healthy = members.healthy_count() as u64;
        out.push((format!("{prefix}membership_total"), total));
        out.push((format!("{prefix}membership_healthy"), healthy));
        out.push((
            format!("{prefix}lb_healthy_panic"),
            u64::from(members.in_panic()),
        ));
        if self.checker.is_some() {
            out.push((format!("{prefix}health_check.healthy"), healthy));
        }
        // Envoy's circuit breaker gauges: 1 while the breaker is open (the
        // resource is at its limit).
        let cb = &self.config.circuit_breakers;
        let open = |used: u64, max: u32| u64::from(used >= u64::from(max));
        let s = &self.stats;
        for (name, value) in [
            (
                "cx_open",
                open(s.upstream_cx_active.get(), cb.max_connections),
            ),
            (
                "rq_pending_open",
                open(s.upstream_rq_pending_active.get(), cb.max_pending_requests),
            ),
            ("rq_open", open(s.upstream_rq_active.get(), cb.max_requests)),
            (
                "rq_retry_open",
                open(self.retries_active.get(), cb.max_retries),
            ),
        ] {
            out.push((format!("{prefix}circuit_breakers.default.{name}"), value));
        }
    }
}

impl CheckObserver for Cluster {
    fn after_check(&self, host: &Arc<Host>, changed: bool, passed: bool) -> bool {
        if passed {
            if let Some(d) = &self.outlier {
                d.on_active_check_passed(host);
            }
        }
        if !changed {
            return true;
        }
        if host.pending_removal() && host.failed_active_hc() {
            // It left the endpoints and stayed only while it passed.
            self.remove_host(host);
            return false;
        }
        self.lb.refresh();
        true
    }
}

/// The hosts for `endpoints` (first occurrence of an address wins), reusing
/// `prev` hosts (weight updated, `on_reuse` applied) and creating the others.
fn reuse_hosts(
    endpoints: &[Endpoint],
    prev: &HashMap<SocketAddr, Arc<Host>>,
    health_checked: bool,
    on_reuse: impl Fn(&Host),
) -> Vec<Arc<Host>> {
    let mut seen = HashSet::with_capacity(endpoints.len());
    let mut hosts = Vec::with_capacity(endpoints.len());
    for ep in endpoints {
        if !seen.insert(ep.addr) {
            continue;
        }
        let host = match prev.get(&ep.addr) {
            Some(h) => {
                h.set_weight(ep.weight);
                on_reuse(h);
                h.clone()
            }
            None => Arc::new(Host::new(ep.addr, ep.weight, health_checked)),
        };
        hosts.push(host);
    }
    hosts
}

/// The current version of a cluster, by name. Listeners and routes hold the
/// slot, so a cluster that changes, disappears or appears later is seen by
/// the next connection or request without a lookup.
#[derive(Debug)]
pub struct ClusterSlot {
    name: String,
    current: ArcSwapOption<Cluster>,
}

impl ClusterSlot {
    /// The cluster name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current version, if the cluster exists.
    #[inline]
    pub fn get(&self) -> Option<Arc<Cluster>> {
        self.current.load_full()
    }
}

#[derive(Debug, Default)]
struct State {
    slots: HashMap<String, Arc<ClusterSlot>>,
    active: BTreeMap<String, Arc<Cluster>>,
    load_assignments: BTreeMap<String, LoadAssignment>,
    static_names: HashSet<String>,
}

/// The clusters and load assignments in force.
#[derive(Debug)]
pub struct ClusterManager {
    shutdown: CancellationToken,
    state: Mutex<State>,
}

fn check_unique<'a>(
    kind: pylon::ResourceType,
    names: impl Iterator<Item = &'a str>,
) -> Result<(), NackError> {
    let mut seen = HashSet::new();
    for n in names {
        if !seen.insert(n) {
            return Err(NackError {
                kind: Some(kind),
                name: n.to_owned(),
                message: format!("duplicate {} name", kind.noun()),
            });
        }
    }
    Ok(())
}

impl ClusterManager {
    /// An empty manager; health checkers stop when `shutdown` is cancelled.
    pub fn new(shutdown: CancellationToken) -> ClusterManager {
        ClusterManager {
            shutdown,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The slot of cluster `name` (created empty if the cluster does not exist yet).
    pub fn slot(&self, name: &str) -> Arc<ClusterSlot> {
        let mut st = self.lock();
        slot_in(&mut st, name)
    }

    /// Replaces the set of clusters. Needs a tokio runtime (checkers are spawned).
    pub fn set_clusters(&self, clusters: Vec<model::Cluster>) -> Result<(), NackError> {
        check_unique(
            pylon::ResourceType::Cluster,
            clusters.iter().map(|c| c.name.as_str()),
        )?;
        let mut st = self.lock();
        let mut next = BTreeMap::new();
        for c in clusters {
            let name = c.name.clone();
            let old = st.active.get(&name).cloned();
            let cluster = match old {
                Some(old) if old.config == c => old,
                old => {
                    let stats = old.as_ref().map(|o| o.stats.clone()).unwrap_or_default();
                    let endpoints: Option<Vec<Endpoint>> =
                        endpoints_of(&c, &st.load_assignments).map(<[Endpoint]>::to_vec);
                    let new = Cluster::new(
                        c,
                        stats,
                        endpoints.as_deref(),
                        old.as_deref(),
                        &self.shutdown,
                    );
                    slot_in(&mut st, &name).current.store(Some(new.clone()));
                    if let Some(old) = old {
                        old.stop();
                    }
                    new
                }
            };
            next.insert(name, cluster);
        }
        let removed: Vec<Arc<Cluster>> = st
            .active
            .iter()
            .filter(|(n, _)| !next.contains_key(*n))
            .map(|(_, c)| c.clone())
            .collect();
        for old in removed {
            if let Some(slot) = st.slots.get(old.name()) {
                slot.current.store(None);
            }
            old.stop();
        }
        st.active = next;
        let State { slots, active, .. } = &mut *st;
        slots.retain(|name, s| Arc::strong_count(s) > 1 || active.contains_key(name));
        Ok(())
    }

    /// Replaces the set of load assignments and updates the EDS clusters whose assignment changed.
    pub fn set_load_assignments(&self, las: Vec<LoadAssignment>) -> Result<(), NackError> {
        check_unique(
            pylon::ResourceType::Endpoint,
            las.iter().map(|l| l.name.as_str()),
        )?;
        let mut st = self.lock();
        let next: BTreeMap<String, LoadAssignment> =
            las.into_iter().map(|l| (l.name.clone(), l)).collect();
        for cluster in st.active.values() {
            let Discovery::Eds { service_name } = &cluster.config.discovery else {
                continue;
            };
            let (old, new) = (
                st.load_assignments.get(service_name),
                next.get(service_name),
            );
            if old == new {
                continue;
            }
            // A removed assignment leaves the cluster without hosts.
            cluster.set_endpoints(new.map(|l| l.endpoints.as_slice()).unwrap_or(&[]));
        }
        st.load_assignments = next;
        Ok(())
    }

    /// Records which clusters come from `static_resources` (for `added_via_api`).
    pub fn mark_static(&self, names: impl IntoIterator<Item = String>) {
        self.lock().static_names.extend(names);
    }

    /// Whether `name` came from `static_resources`.
    pub fn is_static(&self, name: &str) -> bool {
        self.lock().static_names.contains(name)
    }

    /// The clusters in force, by name.
    pub fn clusters(&self) -> Vec<Arc<Cluster>> {
        self.lock().active.values().cloned().collect()
    }

    /// The load assignments in force, by name.
    pub fn load_assignments(&self) -> Vec<LoadAssignment> {
        self.lock().load_assignments.values().cloned().collect()
    }

    /// Stops every health checker.
    pub fn stop_all(&self) {
        for c in self.lock().active.values() {
            c.stop();
        }
    }
}

fn slot_in(st: &mut State, name: &str) -> Arc<ClusterSlot> {
    if let Some(s) = st.slots.get(name) {
        return s.clone();
    }
    let s = Arc::new(ClusterSlot {
        name: name.to_owned(),
        current: ArcSwapOption::from(st.active.get(name).cloned()),
    });
    st.slots.insert(name.to_owned(), s.clone());
    s
}

fn endpoints_of<'a>(
    c: &'a model::Cluster,
    las: &'a BTreeMap<String, LoadAssignment>,
) -> Option<&'a [Endpoint]> {
    match &c.discovery {
        Discovery::Static(la) => Some(&la.endpoints),
        Discovery::Eds { service_name } => las.get(service_name).map(|l| l.endpoints.as_slice()),
        // Resolved by the cluster's own DNS task.
        Discovery::Dns(_) => None,
    }
}

impl dns::Fed for Cluster {
    fn name(&self) -> &str {
        Cluster::name(self)
    }
    fn stats(&self) -> &ClusterStats {
        Cluster::stats(self)
    }
    fn set_dns_answers(&self, answers: &[Option<Vec<IpAddr>>]) {
        Cluster::set_dns_answers(self, answers);
    }
    fn set_endpoints(&self, endpoints: &[Endpoint]) {
        Cluster::set_endpoints(self, endpoints);
    }
    fn mark_endpoints_known(&self) {
        Cluster::mark_endpoints_known(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HealthCheck, HealthCheckKind};
    use std::time::Duration;

    fn ep(port: u16) -> Endpoint {
        Endpoint {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            weight: 1,
        }
    }

    fn eds(name: &str) -> model::Cluster {
        model::Cluster::new(
            name,
            Discovery::Eds {
                service_name: name.into(),
            },
        )
    }

    fn la(name: &str, ports: &[u16]) -> LoadAssignment {
        LoadAssignment {
            name: name.into(),
            endpoints: ports.iter().map(|&p| ep(p)).collect(),
        }
    }

    fn ports(c: &Cluster) -> Vec<u16> {
        c.lb()
            .members()
            .hosts()
            .iter()
            .map(|h| h.addr().port())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn eds_updates_keep_hosts_and_changed_cluster_keeps_state() {
        let cm = ClusterManager::new(CancellationToken::new());
        let slot = cm.slot("a");
        assert!(slot.get().is_none());
        cm.set_clusters(vec![eds("a")]).unwrap();
        let v1 = slot.get().unwrap();
        assert!(ports(&v1).is_empty());
        // Given without its assignment (the xDS store timed out waiting
        // for it): warm at once, no second wait here.
        assert!(v1.initialized());
        cm.set_load_assignments(vec![la("a", &[1, 2])]).unwrap();
        assert!(v1.initialized());
        assert_eq!(ports(&v1), vec![1, 2]);
        let h2 = v1.lb().members().hosts()[1].clone();
        h2.stats.rq_total.add(7);
        // EDS update: host 2 stays (same Arc), 1 leaves, 3 arrives.
        cm.set_load_assignments(vec![la("a", &[2, 3])]).unwrap();
        assert_eq!(ports(&v1), vec![2, 3]);
        assert!(Arc::ptr_eq(&v1.lb().members().hosts()[0], &h2));
        // Unchanged cluster: same version.
        cm.set_clusters(vec![eds("a")]).unwrap();
        assert!(Arc::ptr_eq(&slot.get().unwrap(), &v1));
        // Changed cluster: new version, same hosts and stats.
        v1.stats().upstream_cx_total.inc();
        let mut changed = eds("a");
        changed.connect_timeout = Duration::from_secs(1);
        cm.set_clusters(vec![changed]).unwrap();
        let v2 = slot.get().unwrap();
        assert!(!Arc::ptr_eq(&v2, &v1));
        assert_eq!(v2.config().connect_timeout, Duration::from_secs(1));
        assert!(Arc::ptr_eq(&v2.lb().members().hosts()[0], &h2));
        assert_eq!(v2.stats().upstream_cx_total.get(), 1);
        // Removed: the slot empties; the duplicate check rejects without applying.
        let err = cm.set_clusters(vec![eds("b"), eds("b")]).unwrap_err();
        assert_eq!(err.to_string(), "cluster b: duplicate cluster name");
        assert!(slot.get().is_some());
        cm.set_clusters(vec![]).unwrap();
        assert!(slot.get().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn eds_cluster_without_assignment_does_not_wait_again() {
        // The xDS store gives an EDS cluster without its assignment only
        // once its warming timed out; the cluster does not start a second
        // wait of its own.
        let cm = ClusterManager::new(CancellationToken::new());
        cm.set_clusters(vec![eds("a")]).unwrap();
        let c = cm.slot("a").get().unwrap();
        assert!(c.initialized());
        assert!(c.lb().members().hosts().is_empty());
    }

    #[tokio::test]
    async fn health_checked_hosts_start_failed_and_warm() {
        let cm = ClusterManager::new(CancellationToken::new());
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_port = live.local_addr().unwrap().port();
        let mut c = eds("a");
        c.health_check = Some(HealthCheck {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            unhealthy_threshold: 1,
            healthy_threshold: 1,
            no_traffic_interval: Duration::from_secs(60),
            unhealthy_interval: Duration::from_secs(10),
            kind: HealthCheckKind::Tcp,
            tls: None,
        });
        c.healthy_panic_threshold = 0.0;
        c.discovery = Discovery::Static(la("a", &[live_port]));
        cm.set_clusters(vec![c]).unwrap();
        let cl = cm.slot("a").get().unwrap();
        let h = cl.lb().members().hosts()[0].clone();
        // Before the first check: failed, and (panic off) nothing to pick.
        if !h.first_check_done() {
            assert_eq!(h.health_flags(), "/failed_active_hc");
        }
        for _ in 0..200 {
            if cl.initialized() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(cl.initialized());
        assert_eq!(h.health_flags(), "healthy");
        assert_eq!(cl.pick().unwrap().addr().port(), live_port);
        assert_eq!(cl.stats().hc_success.get(), 1);
        cm.stop_all();
    }
}
