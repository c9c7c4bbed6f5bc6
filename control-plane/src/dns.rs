//! Host names in concise endpoints (`apiserver.example:6443`), resolved by
//! pylon-xds and served over EDS as addresses.
//!
//! Owns the resolver (hickory: the server of `--dns-server`, else the
//! system's from `/etc/resolv.conf`), the last good answer of every name a
//! served revision uses, filling those answers into a revision's load
//! assignments ([`Dns::fill`]), and the refresh loop ([`run`]) that looks
//! each name up again `dns_refresh` after its last lookup and has the
//! snapshot rebuilt only when an answer changed.
//!
//! - A name becomes every address it resolves to (A records, or AAAA when it
//!   has none), each with the endpoint's port and weight, in the endpoint's
//!   place in the list. Addresses are sorted, so a server rotating its
//!   answers pushes nothing.
//! - A new name (in a revision being loaded) is looked up before that
//!   revision is served, for at most [`FIRST_LOOKUP_TIMEOUT`].
//! - A failed lookup keeps the name's last good addresses (none, if it never
//!   resolved) and is shown in `/status` (`dns`) and counted
//!   (`pylon_xds_dns_lookup_failures_total`, `pylon_xds_dns_names_failing`).
//!   An answer with no address (NXDOMAIN, NODATA) counts as a failure too:
//!   pushing an empty endpoint list would take the whole cluster down, and a
//!   name that vanishes is more often a DNS fault than an intent (remove the
//!   endpoint from the YAML instead).
//!
//! Not owned here: reading the file (`config`), building and publishing
//! snapshots (`source`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address, SocketAddress};
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint, Endpoint, LbEndpoint};
use envoy_types::pb::google::protobuf::UInt32Value;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::{Resolver, TokioResolver};
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::resources::{NamedAssignment, NamedEndpoint, Resources};

/// How long a revision with new names waits for their first answers.
pub const FIRST_LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest the refresh loop sleeps, so names added by a reload are
/// picked up.
const IDLE: Duration = Duration::from_secs(1);

/// What `/status` shows about one name.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NameStatus {
    /// The host name.
    pub name: String,
    /// The load assignments (clusters, gRPC services) using it.
    pub used_by: Vec<String>,
    /// The addresses being served (the last good answer).
    pub addresses: Vec<String>,
    /// When those addresses were resolved (ms since the Unix epoch).
    pub resolved_at_unix_ms: Option<u64>,
    /// The error of the last lookup, when it failed; cleared by a good one.
    pub last_error: Option<String>,
    /// When the last lookup failed.
    pub last_error_at_unix_ms: Option<u64>,
    /// How long after a lookup the name is looked up again.
    pub refresh_ms: u64,
}

#[derive(Debug)]
struct Name {
    refresh: Duration,
    used_by: BTreeSet<String>,
    /// The last good answer, sorted; `None` until one arrives.
    addrs: Option<Vec<IpAddr>>,
    resolved_at: Option<SystemTime>,
    last_error: Option<(String, SystemTime)>,
    next: Instant,
}

/// The names in use and their answers.
#[derive(Debug)]
pub struct Dns {
    resolver: TokioResolver,
    names: Mutex<BTreeMap<String, Name>>,
    metrics: Arc<Metrics>,
}

/// What one lookup gave: sorted addresses, or why there are none.
type Answer = Result<Vec<IpAddr>, String>;

impl Dns {
    /// A resolver asking `server` (UDP, then TCP for truncated answers), or
    /// the system's servers from `/etc/resolv.conf` when `None`.
    pub fn new(server: Option<SocketAddr>, metrics: Arc<Metrics>) -> anyhow::Result<Dns> {
        let (config, mut opts) = match server {
            Some(addr) => {
                let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                for c in &mut ns.connections {
                    c.port = addr.port();
                }
                let mut opts = ResolverOpts::default();
                opts.timeout = Duration::from_secs(2);
                opts.attempts = 1;
                (ResolverConfig::from_name_servers(vec![ns]), opts)
            }
            None => hickory_resolver::system_conf::read_system_conf().map_err(|e| {
                anyhow::anyhow!("reading the system's DNS configuration: {e} (use --dns-server)")
            })?,
        };
        opts.ip_strategy = LookupIpStrategy::Ipv4thenIpv6;
        // Every refresh asks the server: the refresh interval is the cache.
        opts.cache_size = 0;
        let resolver = Resolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(|e| anyhow::anyhow!("building the DNS resolver: {e}"))?;
        metrics.dns_names_failing.set(0);
        Ok(Dns {
            resolver,
            names: Mutex::new(BTreeMap::new()),
            metrics,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Name>> {
        self.names.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn lookup(&self, host: &str) -> Answer {
        // A trailing dot: the name is complete, no search domain is tried.
        let fqdn = format!("{host}.");
        match self.resolver.lookup_ip(fqdn.as_str()).await {
            Ok(l) => {
                let addrs: BTreeSet<IpAddr> = l.iter().collect();
                if addrs.is_empty() {
                    Err("no address".to_string())
                } else {
                    Ok(addrs.into_iter().collect())
                }
            }
            Err(e) if e.is_nx_domain() => Err("no such name (NXDOMAIN)".to_string()),
            Err(e) if e.is_no_records_found() => Err("no address (NODATA)".to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Records `answer` for `host`; returns whether its addresses changed.
    fn record(&self, host: &str, answer: Answer) -> bool {
        let mut names = self.lock();
        let Some(n) = names.get_mut(host) else {
            return false;
        };
        n.next = Instant::now() + n.refresh;
        let changed = match answer {
            Ok(addrs) => {
                let changed = n.addrs.as_ref() != Some(&addrs);
                if changed {
                    info!(name = host, addresses = ?addrs, "DNS answer changed");
                }
                n.addrs = Some(addrs);
                n.resolved_at = Some(SystemTime::now());
                n.last_error = None;
                changed
            }
            Err(e) => {
                warn!(name = host, error = %e, kept = ?n.addrs, "DNS lookup failed; keeping the last good addresses");
                self.metrics.dns_lookup_failures.inc();
                n.last_error = Some((e, SystemTime::now()));
                false
            }
        };
        let failing = names.values().filter(|n| n.last_error.is_some()).count();
        self.metrics
            .dns_names_failing
            .set(i64::try_from(failing).unwrap_or(i64::MAX));
        changed
    }

    /// Makes the names of `assignments` the ones tracked (names no revision
    /// uses any more are dropped) and looks the new ones up, for at most
    /// [`FIRST_LOOKUP_TIMEOUT`].
    pub async fn track(&self, assignments: &[NamedAssignment]) {
        let mut wanted: BTreeMap<&str, (Duration, BTreeSet<String>)> = BTreeMap::new();
        for a in assignments {
            for e in &a.endpoints {
                if let NamedEndpoint::Name { host, .. } = e {
                    let w = wanted
                        .entry(host.as_str())
                        .or_insert((a.refresh, BTreeSet::new()));
                    w.0 = w.0.min(a.refresh);
                    w.1.insert(a.assignment.clone());
                }
            }
        }
        let new: Vec<String> = {
            let mut names = self.lock();
            names.retain(|host, _| wanted.contains_key(host.as_str()));
            let mut new = Vec::new();
            for (host, (refresh, used_by)) in wanted {
                match names.get_mut(host) {
                    Some(n) => {
                        n.refresh = refresh;
                        n.used_by = used_by;
                    }
                    None => {
                        names.insert(
                            host.to_string(),
                            Name {
                                refresh,
                                used_by,
                                addrs: None,
                                resolved_at: None,
                                last_error: None,
                                next: Instant::now() + refresh,
                            },
                        );
                        new.push(host.to_string());
                    }
                }
            }
            new
        };
        let lookups = futures::future::join_all(new.iter().map(|h| async move {
            let answer = tokio::time::timeout(FIRST_LOOKUP_TIMEOUT, self.lookup(h))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {FIRST_LOOKUP_TIMEOUT:?}")));
            (h, answer)
        }))
        .await;
        for (h, answer) in lookups {
            self.record(h, answer);
        }
    }

    /// Looks up every name that is due; returns whether an answer changed.
    pub async fn refresh_due(&self) -> bool {
        let now = Instant::now();
        let due: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, n)| n.next <= now)
            .map(|(h, _)| h.clone())
            .collect();
        let answers =
            futures::future::join_all(due.iter().map(|h| async move { (h, self.lookup(h).await) }))
                .await;
        let mut changed = false;
        for (h, answer) in answers {
            changed |= self.record(h, answer);
        }
        changed
    }

    /// When the next name is due, if any name is tracked.
    pub fn next_due(&self) -> Option<Instant> {
        self.lock().values().map(|n| n.next).min()
    }

    /// Replaces the endpoints of every load assignment in `resources.names`
    /// with those written, names expanded to their last good addresses.
    pub fn fill(&self, resources: &mut Resources) {
        let names = self.lock();
        for a in &resources.names {
            let Some(cla) = resources
                .endpoints
                .iter_mut()
                .find(|c| c.cluster_name == a.assignment)
            else {
                continue;
            };
            let Some(locality) = cla.endpoints.first_mut() else {
                continue;
            };
            let mut lb_endpoints = Vec::new();
            for e in &a.endpoints {
                match e {
                    NamedEndpoint::Fixed(lb) => lb_endpoints.push((**lb).clone()),
                    NamedEndpoint::Name { host, port, weight } => {
                        let addrs = names.get(host).and_then(|n| n.addrs.as_deref());
                        for ip in addrs.unwrap_or_default() {
                            lb_endpoints.push(endpoint(*ip, *port, *weight));
                        }
                    }
                }
            }
            locality.lb_endpoints = lb_endpoints;
        }
    }

    /// Every tracked name, for `/status`.
    pub fn status(&self) -> Vec<NameStatus> {
        self.lock()
            .iter()
            .map(|(host, n)| NameStatus {
                name: host.clone(),
                used_by: n.used_by.iter().cloned().collect(),
                addresses: n.addrs.iter().flatten().map(ToString::to_string).collect(),
                resolved_at_unix_ms: n.resolved_at.map(unix_ms),
                last_error: n.last_error.as_ref().map(|(e, _)| e.clone()),
                last_error_at_unix_ms: n.last_error.as_ref().map(|(_, t)| unix_ms(*t)),
                refresh_ms: u64::try_from(n.refresh.as_millis()).unwrap_or(u64::MAX),
            })
            .collect()
    }
}

/// An EDS endpoint, spelled as a concise IP endpoint would be.
fn endpoint(ip: IpAddr, port: u16, weight: u32) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: ip.to_string(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        })),
        load_balancing_weight: (weight != 1).then_some(UInt32Value { value: weight }),
        ..Default::default()
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Looks names up as they fall due and, when an answer changed, has
/// `republish` rebuild and publish the snapshot. Ends with `shutdown`.
pub async fn run<F>(dns: Arc<Dns>, republish: F, shutdown: CancellationToken)
where
    F: Fn() + Send + Sync + Clone + 'static,
{
    loop {
        let idle = Instant::now() + IDLE;
        let next = dns.next_due().map_or(idle, |n| n.min(idle));
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        if dns.refresh_due().await {
            let r = republish.clone();
            if let Err(e) = tokio::task::spawn_blocking(r).await {
                warn!(error = %e, "republishing after a DNS change failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    fn addrs(
        cla: &envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment,
    ) -> Vec<String> {
        cla.endpoints[0]
            .lb_endpoints
            .iter()
            .map(|lb| {
                let Some(lb_endpoint::HostIdentifier::Endpoint(e)) = &lb.host_identifier else {
                    panic!("no endpoint")
                };
                let Some(address::Address::SocketAddress(sa)) =
                    e.address.as_ref().and_then(|a| a.address.clone())
                else {
                    panic!("no socket address")
                };
                let Some(socket_address::PortSpecifier::PortValue(port)) = sa.port_specifier else {
                    panic!("no port")
                };
                let w = lb.load_balancing_weight.map_or(1, |w| w.value);
                format!("{}:{port}/{w}", sa.address)
            })
            .collect()
    }

    #[tokio::test]
    async fn names_are_filled_in_place_and_failures_keep_the_last_answer() {
        let r = load_str(
            "pylon.yaml",
            "clusters:\n- name: api\n  dns_refresh: 2s\n  endpoints:\n  - 127.0.0.9:1\n  - {address: api.test:6443, weight: 2}\n  - 127.0.0.8:1\n- name: other\n  endpoints: [api.test:80, web.test:80]\n",
        )
        .unwrap();
        // Until resolved, only the IP endpoints are served.
        assert_eq!(
            addrs(&r.endpoints[0]),
            vec!["127.0.0.9:1/1", "127.0.0.8:1/1"]
        );
        assert!(addrs(&r.endpoints[1]).is_empty());
        assert_eq!(r.names.len(), 2);
        assert_eq!(r.names[0].refresh, Duration::from_secs(2));
        assert_eq!(r.names[1].refresh, Duration::from_secs(5));

        // A server that does not exist: every first lookup fails.
        let metrics = Arc::new(Metrics::new());
        let dns = Dns::new(Some("127.0.0.1:9".parse().unwrap()), Arc::clone(&metrics)).unwrap();
        dns.track(&r.names).await;
        let status = dns.status();
        assert_eq!(
            status.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            vec!["api.test", "web.test"]
        );
        assert_eq!(status[0].used_by, vec!["api", "other"]);
        assert_eq!(
            status[0].refresh_ms, 2000,
            "the shortest refresh of its users"
        );
        assert!(status
            .iter()
            .all(|s| s.last_error.is_some() && s.addresses.is_empty()));
        assert_eq!(metrics.dns_names_failing.get(), 2);
        assert_eq!(metrics.dns_lookup_failures.get(), 2);

        // Answers arrive: each name expands in its place, with its port and weight.
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(dns.record("api.test", Ok(vec![ip("127.0.0.2"), ip("127.0.0.3")])));
        assert!(dns.record("web.test", Ok(vec![ip("127.0.0.4")])));
        assert_eq!(metrics.dns_names_failing.get(), 0);
        let mut filled = r.clone();
        dns.fill(&mut filled);
        assert_eq!(
            addrs(&filled.endpoints[0]),
            vec![
                "127.0.0.9:1/1",
                "127.0.0.2:6443/2",
                "127.0.0.3:6443/2",
                "127.0.0.8:1/1"
            ]
        );
        assert_eq!(
            addrs(&filled.endpoints[1]),
            vec!["127.0.0.2:80/1", "127.0.0.3:80/1", "127.0.0.4:80/1"]
        );
        // The same answer changes nothing; a failure keeps the last answer.
        assert!(!dns.record("api.test", Ok(vec![ip("127.0.0.2"), ip("127.0.0.3")])));
        assert!(!dns.record("api.test", Err("timed out".into())));
        let mut again = r.clone();
        dns.fill(&mut again);
        assert_eq!(again, filled);
        let s = &dns.status()[0];
        assert_eq!(s.last_error.as_deref(), Some("timed out"));
        assert_eq!(s.addresses, vec!["127.0.0.2", "127.0.0.3"]);
        assert_eq!(metrics.dns_names_failing.get(), 1);

        // A revision without a name stops tracking it.
        dns.track(&r.names[..1]).await;
        assert_eq!(dns.status().len(), 1);
        dns.track(&[]).await;
        assert!(dns.status().is_empty());
        assert_eq!(dns.next_due(), None);
    }
}
