//! DNS discovery: the hosts of STRICT_DNS and LOGICAL_DNS clusters, with
//! Envoy's semantics (service_discovery.rst).
//!
//! Owns the resolver of one cluster version (hickory, built from the model's
//! [`DnsDiscovery`]: the servers given, else the system's from
//! `/etc/resolv.conf`; no answer cache, so every refresh asks), and the task
//! that keeps the cluster's hosts following the answers. It feeds hosts the
//! way EDS does, through [`Fed::set_endpoints`]; health and selection are
//! the cluster's business.
//!
//! - STRICT_DNS: every address of every name is a host, with the name's port
//!   and weight. LOGICAL_DNS: one host, the first address of the one name;
//!   new connections go to whatever it is at the time.
//! - Each name is looked up again `dns_refresh_rate` (5 s) after its last
//!   answer, or after the answer's TTL with `respect_dns_ttl`; after a failed
//!   lookup, `dns_failure_refresh_rate` (its base, doubling up to its max),
//!   else `dns_refresh_rate`; plus a random part below `dns_jitter`.
//! - A failed lookup (timeout, server failure, no server reachable) keeps the
//!   name's last addresses. An answer without addresses (NXDOMAIN, NODATA) is
//!   an answer: the name then contributes no host, as in Envoy.
//! - The cluster is warm once every name had its first lookup, failed or not.
//! - `update_attempt`, `update_success` and `update_failure` count lookups, as
//!   Envoy's DNS clusters do.

use std::net::{IpAddr, SocketAddr};
use std::sync::Weak;
use std::time::Duration;

use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::{Resolver, TokioResolver};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::model::{DnsDiscovery, Endpoint, LookupFamily};
use crate::upstream::stats::ClusterStats;

/// The cluster whose hosts DNS discovery keeps (implemented by
/// `cluster::Cluster`): discovery feeds it without importing it, so that
/// discovery and the cluster it feeds are not an import circle.
pub trait Fed: Send + Sync {
    /// The cluster's name, for logs.
    fn name(&self) -> &str;
    /// Where lookups are counted.
    fn stats(&self) -> &ClusterStats;
    /// Each name's addresses as now known (kept for the next version).
    fn set_dns_answers(&self, answers: &[Option<Vec<IpAddr>>]);
    /// The hosts, from the answers.
    fn set_endpoints(&self, endpoints: &[Endpoint]);
    /// Every name had its first lookup: the cluster is warm.
    fn mark_endpoints_known(&self);
}

/// What one lookup gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The addresses (possibly none), and the smallest TTL among them.
    Addresses(Vec<IpAddr>, Option<Duration>),
    /// The lookup failed; why.
    Failed(String),
}

/// The resolver for `cfg`: its servers (UDP, or TCP with `use_tcp`), else the
/// system's; the system's search domains unless `no_default_search_domain`.
pub fn resolver(cfg: &DnsDiscovery) -> Result<TokioResolver, String> {
    let system = hickory_resolver::system_conf::read_system_conf();
    let (config, mut opts) = if cfg.resolvers.is_empty() {
        system.map_err(|e| format!("reading the system's DNS configuration: {e}"))?
    } else {
        let search = match (&system, cfg.no_default_search_domain) {
            (Ok((sys, _)), false) => sys.search().to_vec(),
            _ => Vec::new(),
        };
        let servers = cfg
            .resolvers
            .iter()
            .map(|a| name_server(*a, cfg.use_tcp))
            .collect();
        let ndots = system.as_ref().map_or(1, |(_, o)| o.ndots);
        let mut opts = ResolverOpts::default();
        opts.ndots = ndots;
        (ResolverConfig::from_parts(None, search, servers), opts)
    };
    opts.timeout = cfg.query_timeout;
    // hickory counts retries after the first try; c-ares counts tries.
    opts.attempts = cfg.query_tries.saturating_sub(1) as usize;
    // Every refresh asks the servers, as Envoy's resolver does.
    opts.cache_size = 0;
    opts.ip_strategy = strategy(cfg.lookup_family);
    Resolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(opts)
        .build()
        .map_err(|e| format!("building the DNS resolver: {e}"))
}

/// One server at `addr`, over UDP or TCP only.
pub fn name_server(addr: SocketAddr, tcp: bool) -> NameServerConfig {
    let mut ns = if tcp {
        NameServerConfig::tcp(addr.ip())
    } else {
        NameServerConfig::udp(addr.ip())
    };
    for c in &mut ns.connections {
        c.port = addr.port();
    }
    ns
}

/// Envoy's lookup families as hickory strategies.
pub fn strategy(family: LookupFamily) -> LookupIpStrategy {
    match family {
        LookupFamily::Auto => LookupIpStrategy::Ipv6thenIpv4,
        LookupFamily::V4Only => LookupIpStrategy::Ipv4Only,
        LookupFamily::V6Only => LookupIpStrategy::Ipv6Only,
        LookupFamily::V4Preferred => LookupIpStrategy::Ipv4thenIpv6,
        LookupFamily::All => LookupIpStrategy::Ipv4AndIpv6,
    }
}

/// Looks `host` up once.
pub async fn lookup(resolver: &TokioResolver, host: &str) -> Answer {
    match resolver.lookup_ip(host).await {
        Ok(l) => {
            let ttl = l
                .as_lookup()
                .answers()
                .iter()
                .map(|r| r.ttl)
                .min()
                .map(|s| Duration::from_secs(u64::from(s)));
            let mut addrs: Vec<IpAddr> = Vec::new();
            for ip in l.iter() {
                if !addrs.contains(&ip) {
                    addrs.push(ip);
                }
            }
            Answer::Addresses(addrs, ttl)
        }
        // NXDOMAIN or no record of the family asked for: an empty answer.
        Err(e) if e.is_no_records_found() => Answer::Addresses(Vec::new(), None),
        Err(e) => Answer::Failed(e.to_string()),
    }
}

/// The wait after an answer, before looking the name up again.
/// `failures` is the number of failed lookups in a row, this one included.
pub fn next_wait(cfg: &DnsDiscovery, answer: &Answer, failures: u32) -> Duration {
    let base = match answer {
        Answer::Addresses(addrs, ttl) => match ttl {
            Some(ttl) if cfg.respect_ttl && !addrs.is_empty() && !ttl.is_zero() => *ttl,
            _ => cfg.refresh_rate,
        },
        Answer::Failed(_) => match cfg.failure_refresh {
            Some((base, max)) => {
                let doublings = failures.saturating_sub(1).min(30);
                base.saturating_mul(1 << doublings).min(max)
            }
            None => cfg.refresh_rate,
        },
    };
    let jitter = cfg
        .jitter
        .map_or(Duration::ZERO, |j| j.mul_f64(rand::random::<f64>()));
    base + jitter
}

/// The endpoints the names' current addresses make (`None`: not looked up yet).
pub fn endpoints(cfg: &DnsDiscovery, addrs: &[Option<Vec<IpAddr>>]) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for (target, addrs) in cfg.targets.iter().zip(addrs) {
        let Some(addrs) = addrs else { continue };
        let ips: &[IpAddr] = if cfg.logical {
            addrs.get(..1).unwrap_or(&[])
        } else {
            addrs
        };
        out.extend(ips.iter().map(|ip| Endpoint {
            addr: SocketAddr::new(*ip, target.port),
            weight: target.weight,
        }));
    }
    out
}

/// Keeps `cluster`'s hosts following the answers for `cfg`'s names until
/// `token` is cancelled or the cluster version is gone. `known` holds each
/// name's addresses as the previous version of the cluster had them (so a
/// changed cluster does not start empty).
pub async fn run<C: Fed + ?Sized>(
    cluster: Weak<C>,
    cfg: DnsDiscovery,
    mut known: Vec<Option<Vec<IpAddr>>>,
    token: CancellationToken,
) {
    let name = cluster
        .upgrade()
        .map(|c| c.name().to_owned())
        .unwrap_or_default();
    let resolver = match resolver(&cfg) {
        Ok(r) => r,
        Err(e) => {
            // Nothing can be resolved: the cluster keeps what it has (warm,
            // so that it does not hold the proxy's start-up forever).
            tracing::error!(cluster = %name, error = %e, "DNS cluster cannot resolve");
            if let Some(c) = cluster.upgrade() {
                c.mark_endpoints_known();
            }
            return;
        }
    };
    known.resize(cfg.targets.len(), None);
    let now = Instant::now();
    let mut due: Vec<Instant> = vec![now; cfg.targets.len()];
    let mut failures: Vec<u32> = vec![0; cfg.targets.len()];
    let mut attempted: Vec<bool> = vec![false; cfg.targets.len()];
    let mut warm = false;
    loop {
        let Some(&next) = due.iter().min() else {
            // No names: nothing to resolve, the cluster has no hosts.
            if let Some(c) = cluster.upgrade() {
                c.mark_endpoints_known();
            }
            return;
        };
        tokio::select! {
            biased;
            _ = token.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        let now = Instant::now();
        let batch: Vec<usize> = (0..due.len()).filter(|&i| due[i] <= now).collect();
        let answers = futures::future::join_all(
            batch
                .iter()
                .map(|&i| lookup(&resolver, &cfg.targets[i].host)),
        )
        .await;
        let Some(c) = cluster.upgrade() else { return };
        if token.is_cancelled() {
            return;
        }
        let before = endpoints(&cfg, &known);
        for (&i, answer) in batch.iter().zip(&answers) {
            attempted[i] = true;
            c.stats().update_attempt.inc();
            match answer {
                Answer::Addresses(addrs, _) => {
                    c.stats().update_success.inc();
                    failures[i] = 0;
                    known[i] = Some(addrs.clone());
                }
                Answer::Failed(e) => {
                    c.stats().update_failure.inc();
                    failures[i] = failures[i].saturating_add(1);
                    tracing::warn!(
                        cluster = %name,
                        host = %cfg.targets[i].host,
                        error = %e,
                        "DNS lookup failed; keeping the last addresses"
                    );
                }
            }
            due[i] = Instant::now() + next_wait(&cfg, answer, failures[i]);
        }
        c.set_dns_answers(&known);
        let after = endpoints(&cfg, &known);
        if after != before || !warm {
            if after != before {
                tracing::info!(
                    cluster = %name,
                    hosts = ?after.iter().map(|e| e.addr).collect::<Vec<_>>(),
                    "DNS answer changed the hosts"
                );
            }
            c.set_endpoints(&after);
        }
        if !warm && attempted.iter().all(|&a| a) {
            warm = true;
            c.mark_endpoints_known();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DnsTarget;

    fn cfg(logical: bool) -> DnsDiscovery {
        DnsDiscovery {
            logical,
            targets: vec![
                DnsTarget {
                    host: "a.test".into(),
                    port: 80,
                    weight: 1,
                },
                DnsTarget {
                    host: "b.test".into(),
                    port: 81,
                    weight: 3,
                },
            ],
            refresh_rate: Duration::from_secs(5),
            failure_refresh: None,
            respect_ttl: false,
            jitter: None,
            lookup_family: LookupFamily::Auto,
            resolvers: Vec::new(),
            use_tcp: false,
            no_default_search_domain: false,
            query_timeout: Duration::from_secs(5),
            query_tries: 4,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn strict_uses_every_address_logical_the_first() {
        let known = vec![
            Some(vec![ip("127.0.0.1"), ip("127.0.0.2")]),
            Some(vec![ip("::1")]),
        ];
        let eps = endpoints(&cfg(false), &known);
        let got: Vec<(String, u32)> = eps.iter().map(|e| (e.addr.to_string(), e.weight)).collect();
        assert_eq!(
            got,
            vec![
                ("127.0.0.1:80".to_string(), 1),
                ("127.0.0.2:80".to_string(), 1),
                ("[::1]:81".to_string(), 3),
            ]
        );
        let mut logical = cfg(true);
        logical.targets.truncate(1);
        let eps = endpoints(&logical, &known[..1]);
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].addr.to_string(), "127.0.0.1:80");
        // Not looked up yet, or an empty answer: no host.
        assert!(endpoints(&cfg(false), &[None, Some(Vec::new())]).is_empty());
    }

    #[test]
    fn waits_follow_refresh_ttl_and_failure_backoff() {
        let mut c = cfg(false);
        let ok = Answer::Addresses(vec![ip("127.0.0.1")], Some(Duration::from_secs(30)));
        let failed = Answer::Failed("timeout".into());
        assert_eq!(next_wait(&c, &ok, 0), Duration::from_secs(5));
        assert_eq!(next_wait(&c, &failed, 3), Duration::from_secs(5));
        c.respect_ttl = true;
        assert_eq!(next_wait(&c, &ok, 0), Duration::from_secs(30));
        // An empty answer or a TTL of 0 falls back to the refresh rate.
        let empty = Answer::Addresses(Vec::new(), None);
        assert_eq!(next_wait(&c, &empty, 0), Duration::from_secs(5));
        let zero = Answer::Addresses(vec![ip("127.0.0.1")], Some(Duration::ZERO));
        assert_eq!(next_wait(&c, &zero, 0), Duration::from_secs(5));
        c.failure_refresh = Some((Duration::from_secs(1), Duration::from_secs(6)));
        let waits: Vec<u64> = (1..=5)
            .map(|n| next_wait(&c, &failed, n).as_secs())
            .collect();
        assert_eq!(waits, vec![1, 2, 4, 6, 6]);
        c.jitter = Some(Duration::from_secs(1));
        let w = next_wait(&c, &empty, 0);
        assert!(
            w >= Duration::from_secs(5) && w < Duration::from_secs(6),
            "{w:?}"
        );
    }

    #[test]
    fn resolvers_keep_their_port_and_transport() {
        let ns = name_server("127.0.0.1:15353".parse().unwrap(), false);
        assert_eq!(ns.connections.len(), 1);
        assert_eq!(ns.connections[0].port, 15353);
        let ns = name_server("127.0.0.1:53".parse().unwrap(), true);
        assert_eq!(ns.connections[0].port, 53);
    }
}
