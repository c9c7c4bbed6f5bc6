//! Host selection: weighted round robin with Envoy's panic threshold.
//!
//! Owns the load balancer of one cluster version: an immutable [`Members`]
//! snapshot (all hosts, healthy hosts, and their precomputed schedules) behind
//! an `ArcSwap`, plus a round-robin counter. Picking a host is one `ArcSwap`
//! load, one `fetch_add` and an index: no lock, no allocation. Snapshots are
//! rebuilt (under a mutex that only writers take) when endpoints or host
//! health change.
//!
//! Weights: when all weights are equal, plain round robin. Otherwise the
//! schedule is the sequence earliest-deadline-first (Envoy's weighted round
//! robin) produces over one full cycle, computed once per snapshot with exact
//! rational deadlines, so every cycle gives each host exactly its share.
//! Cycles longer than [`MAX_SCHEDULE`] picks are scaled down proportionally.
//!
//! Does not own health checking (it only reads `Host::is_healthy`) or hosts.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;

use crate::upstream::host::Host;

/// Longest weighted schedule kept per host set.
pub const MAX_SCHEDULE: u64 = 1 << 16;

/// Order of picks over one host list.
#[derive(Debug)]
enum Schedule {
    /// Equal weights: index = counter % len.
    Plain,
    /// Indexes into the host list, one full EDF cycle.
    Weighted(Box<[u32]>),
}

/// One host list with its schedule.
#[derive(Debug)]
struct HostList {
    hosts: Vec<Arc<Host>>,
    schedule: Schedule,
}

impl HostList {
    fn new(hosts: Vec<Arc<Host>>) -> HostList {
        let schedule = build_schedule(&hosts);
        HostList { hosts, schedule }
    }

    #[inline]
    fn pick(&self, counter: usize) -> Option<&Arc<Host>> {
        if self.hosts.is_empty() {
            return None;
        }
        match &self.schedule {
            Schedule::Plain => self.hosts.get(counter % self.hosts.len()),
            Schedule::Weighted(s) => {
                let i = *s.get(counter % s.len())?;
                self.hosts.get(i as usize)
            }
        }
    }
}

/// An immutable snapshot of a cluster's hosts as the load balancer sees them.
#[derive(Debug)]
pub struct Members {
    all: HostList,
    healthy: HostList,
    panic: bool,
}

impl Members {
    /// Builds a snapshot; `panic_threshold` is a percentage (0 disables panic mode).
    pub fn build(hosts: Vec<Arc<Host>>, panic_threshold: f64) -> Members {
        let healthy: Vec<Arc<Host>> = hosts.iter().filter(|h| h.is_healthy()).cloned().collect();
        let total = hosts.len();
        // Envoy: panic when healthy% < threshold; never with threshold 0.
        let panic = total > 0
            && panic_threshold > 0.0
            && (healthy.len() as f64) * 100.0 / (total as f64) < panic_threshold;
        Members {
            all: HostList::new(hosts),
            healthy: HostList::new(healthy),
            panic,
        }
    }

    /// Every host, healthy or not.
    pub fn hosts(&self) -> &[Arc<Host>] {
        &self.all.hosts
    }

    /// Number of healthy hosts.
    pub fn healthy_count(&self) -> usize {
        self.healthy.hosts.len()
    }

    /// Whether the cluster is in panic mode (balancing across all hosts).
    pub fn in_panic(&self) -> bool {
        self.panic
    }

    #[inline]
    fn pick(&self, counter: usize) -> Option<&Arc<Host>> {
        if self.panic {
            self.all.pick(counter)
        } else {
            self.healthy.pick(counter)
        }
    }
}

/// The load balancer of one cluster version.
#[derive(Debug)]
pub struct LoadBalancer {
    members: ArcSwap<Members>,
    counter: AtomicUsize,
    panic_threshold: f64,
    /// Serialises rebuilds (endpoint updates and health changes race otherwise).
    rebuild: Mutex<()>,
}

impl LoadBalancer {
    /// A load balancer over `hosts`; the round robin starts at `start` (random per cluster version).
    pub fn new(hosts: Vec<Arc<Host>>, panic_threshold: f64, start: usize) -> LoadBalancer {
        LoadBalancer {
            members: ArcSwap::from_pointee(Members::build(hosts, panic_threshold)),
            counter: AtomicUsize::new(start),
            panic_threshold,
            rebuild: Mutex::new(()),
        }
    }

    /// The next host, or `None` when there is none to use (no host, or no
    /// healthy host with panic mode off).
    #[inline]
    pub fn pick(&self) -> Option<Arc<Host>> {
        let members = self.members.load();
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        members.pick(n).cloned()
    }

    /// The current snapshot.
    pub fn members(&self) -> Arc<Members> {
        self.members.load_full()
    }

    /// Replaces the host set.
    pub fn set_hosts(&self, hosts: Vec<Arc<Host>>) {
        let _g = self.rebuild.lock().unwrap_or_else(PoisonError::into_inner);
        self.members
            .store(Arc::new(Members::build(hosts, self.panic_threshold)));
    }

    /// Rebuilds the snapshot after a host's health changed.
    pub fn refresh(&self) {
        let _g = self.rebuild.lock().unwrap_or_else(PoisonError::into_inner);
        let hosts = self.members.load().all.hosts.clone();
        self.members
            .store(Arc::new(Members::build(hosts, self.panic_threshold)));
    }
}

/// A host's next deadline in the EDF simulation: `num / weight`.
#[derive(Debug, PartialEq, Eq)]
struct Deadline {
    num: u64,
    weight: u64,
    index: u32,
}

impl Ord for Deadline {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        // BinaryHeap is a max-heap: reverse so the earliest deadline (then the
        // lowest index, as Envoy's insertion order) comes out first.
        let a = u128::from(self.num) * u128::from(other.weight);
        let b = u128::from(other.num) * u128::from(self.weight);
        b.cmp(&a).then_with(|| other.index.cmp(&self.index))
    }
}

impl PartialOrd for Deadline {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

fn build_schedule(hosts: &[Arc<Host>]) -> Schedule {
    let Some(first) = hosts.first() else {
        return Schedule::Plain;
    };
    let w0 = first.weight();
    if hosts.iter().all(|h| h.weight() == w0) {
        return Schedule::Plain;
    }
    let mut weights: Vec<u64> = hosts.iter().map(|h| u64::from(h.weight().max(1))).collect();
    let mut sum: u64 = weights.iter().sum();
    if sum > MAX_SCHEDULE {
        for w in &mut weights {
            *w = (*w * MAX_SCHEDULE / sum).max(1);
        }
    }
    let g = weights.iter().fold(0, |g, &w| gcd(g, w)).max(1);
    for w in &mut weights {
        *w /= g;
    }
    sum = weights.iter().sum();
    edf_schedule(&weights, sum)
}

/// `len` picks of earliest-deadline-first over `weights`: host `i`'s k-th
/// deadline is `k / w_i`. Over `sum(weights)` picks (weights with gcd 1) every
/// host gets exactly its weight.
fn edf_schedule(weights: &[u64], len: u64) -> Schedule {
    let mut heap: BinaryHeap<Deadline> = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| Deadline {
            num: 1,
            weight: w,
            index: i as u32,
        })
        .collect();
    let mut out = Vec::with_capacity(len as usize);
    for _ in 0..len {
        let Some(mut d) = heap.pop() else { break };
        out.push(d.index);
        d.num += 1;
        heap.push(d);
    }
    Schedule::Weighted(out.into_boxed_slice())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::host::FAILED_ACTIVE_HC;
    use std::collections::HashMap;
    use std::net::SocketAddr;

    fn hosts(weights: &[u32]) -> Vec<Arc<Host>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let addr: SocketAddr = format!("127.0.0.1:{}", 1000 + i).parse().unwrap();
                Arc::new(Host::new(addr, w, false))
            })
            .collect()
    }

    fn counts(lb: &LoadBalancer, n: usize) -> HashMap<u16, usize> {
        let mut c = HashMap::new();
        for _ in 0..n {
            let h = lb.pick().expect("a host");
            *c.entry(h.addr().port()).or_default() += 1;
        }
        c
    }

    #[test]
    fn round_robin_counts_are_equal_from_any_start() {
        for start in [0, 1, 2, 7, 4_000_000_000] {
            let lb = LoadBalancer::new(hosts(&[1, 1, 1]), 50.0, start);
            let c = counts(&lb, 300);
            assert_eq!(c.len(), 3);
            assert!(c.values().all(|&n| n == 100), "{c:?}");
        }
    }

    #[test]
    fn round_robin_is_in_order() {
        let lb = LoadBalancer::new(hosts(&[1, 1, 1]), 50.0, 0);
        let seq: Vec<u16> = (0..6).map(|_| lb.pick().unwrap().addr().port()).collect();
        assert_eq!(seq, vec![1000, 1001, 1002, 1000, 1001, 1002]);
    }

    #[test]
    fn weighted_round_robin_follows_weights_and_interleaves() {
        let lb = LoadBalancer::new(hosts(&[1, 2, 3]), 50.0, 0);
        let c = counts(&lb, 600);
        assert_eq!(c[&1000], 100);
        assert_eq!(c[&1001], 200);
        assert_eq!(c[&1002], 300);
        // EDF spreads the heaviest host out: never 3 picks of it in a row.
        let seq: Vec<u16> = (0..6).map(|_| lb.pick().unwrap().addr().port()).collect();
        assert!(
            !seq.windows(3).any(|w| w.iter().all(|&p| p == 1002)),
            "{seq:?}"
        );
        // Weights with a common factor give the same cycle.
        let lb = LoadBalancer::new(hosts(&[10, 20, 30]), 50.0, 0);
        let c = counts(&lb, 6);
        assert_eq!((c[&1000], c[&1001], c[&1002]), (1, 2, 3));
    }

    #[test]
    fn huge_weights_are_scaled() {
        let lb = LoadBalancer::new(hosts(&[1, 1_000_000]), 50.0, 0);
        let c = counts(&lb, 65536);
        assert!(c[&1000] >= 1 && c[&1000] < 10, "{c:?}");
    }

    #[test]
    fn unhealthy_hosts_are_skipped() {
        let hs = hosts(&[1, 1, 1]);
        hs[1].set_flag(FAILED_ACTIVE_HC);
        let lb = LoadBalancer::new(hs, 50.0, 0);
        let c = counts(&lb, 100);
        assert_eq!(c.get(&1001), None);
        assert_eq!(c[&1000], 50);
        assert_eq!(c[&1002], 50);
    }

    #[test]
    fn panic_threshold() {
        // 1 healthy of 3 = 33% < 50%: panic, all hosts used.
        let hs = hosts(&[1, 1, 1]);
        hs[0].set_flag(FAILED_ACTIVE_HC);
        hs[1].set_flag(FAILED_ACTIVE_HC);
        let lb = LoadBalancer::new(hs.clone(), 50.0, 0);
        assert!(lb.members().in_panic());
        assert_eq!(counts(&lb, 30).len(), 3);
        // Same health, threshold 30%: 33% is not below, only the healthy host.
        let lb = LoadBalancer::new(hs.clone(), 30.0, 0);
        assert!(!lb.members().in_panic());
        let c = counts(&lb, 30);
        assert_eq!(c.len(), 1);
        assert_eq!(c[&1002], 30);
        // No healthy host: panic with the default threshold, none with 0.
        hs[2].set_flag(FAILED_ACTIVE_HC);
        let lb = LoadBalancer::new(hs.clone(), 50.0, 0);
        assert_eq!(counts(&lb, 30).len(), 3);
        let lb = LoadBalancer::new(hs.clone(), 0.0, 0);
        assert!(lb.pick().is_none());
        // Health recovers: refresh picks it up.
        hs[2].clear_flag(FAILED_ACTIVE_HC);
        lb.refresh();
        assert_eq!(lb.pick().unwrap().addr().port(), 1002);
        // No hosts at all.
        let lb = LoadBalancer::new(Vec::new(), 50.0, 0);
        assert!(lb.pick().is_none());
    }
}
