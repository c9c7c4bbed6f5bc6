//! One upstream host: its address, weight, health flags, stats and outlier
//! detection counters.
//!
//! A host is shared (`Arc<Host>`) by every version of its cluster and every
//! load-balancer snapshot that contains it, so a host that stays across an EDS
//! update or a cluster change keeps its health state and stats (its pooled
//! connections are kept by the cluster's pools, `upstream::pool`).
//! Everything a request touches is an atomic.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::stats::{stats_struct, Counter, Gauge};

/// Health flag: the active health checker failed the host (Envoy `FAILED_ACTIVE_HC`).
pub const FAILED_ACTIVE_HC: u8 = 1;
/// Health flag: the last failed check timed out (Envoy `ACTIVE_HC_TIMEOUT`); informational.
pub const ACTIVE_HC_TIMEOUT: u8 = 2;
/// Health flag: outlier detection ejected the host (Envoy `FAILED_OUTLIER_CHECK`).
pub const FAILED_OUTLIER_CHECK: u8 = 4;
/// Health flag: the host left the endpoints but stays while it passes active
/// health checks (Envoy `PENDING_DYNAMIC_REMOVAL`); it still takes traffic.
pub const PENDING_DYNAMIC_REMOVAL: u8 = 8;

/// The flags that keep a host out of the load balancer's healthy set.
const UNHEALTHY: u8 = FAILED_ACTIVE_HC | FAILED_OUTLIER_CHECK;

stats_struct! {
    /// Per-host stats, as `/clusters` shows them.
    pub struct HostStats {
        /// Connections opened (attempts included).
        cx_total: Counter => "cx_total",
        /// Connections open now.
        cx_active: Gauge => "cx_active",
        /// Connection attempts that failed or timed out.
        cx_connect_fail: Counter => "cx_connect_fail",
        /// Requests sent.
        rq_total: Counter => "rq_total",
        /// Requests in flight.
        rq_active: Gauge => "rq_active",
        /// Requests answered with a non-5xx status.
        rq_success: Counter => "rq_success",
        /// Requests that failed (5xx, reset, timeout).
        rq_error: Counter => "rq_error",
    }
}

/// One upstream host.
#[derive(Debug)]
pub struct Host {
    addr: SocketAddr,
    weight: AtomicU32,
    flags: AtomicU8,
    /// Whether the health checker has finished at least one check of this host.
    first_check_done: AtomicBool,
    /// Stats.
    pub stats: HostStats,
    /// What outlier detection counts for this host.
    pub(crate) outlier: HostOutlier,
}

impl Host {
    /// A new host. A host of a health-checked cluster starts unhealthy
    /// (`/failed_active_hc`) until its first check, as in Envoy.
    pub fn new(addr: SocketAddr, weight: u32, health_checked: bool) -> Host {
        Host {
            addr,
            weight: AtomicU32::new(weight.max(1)),
            flags: AtomicU8::new(if health_checked { FAILED_ACTIVE_HC } else { 0 }),
            first_check_done: AtomicBool::new(false),
            stats: HostStats::default(),
            outlier: HostOutlier::default(),
        }
    }

    /// The host's address.
    #[inline]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Load balancing weight (>= 1).
    #[inline]
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    pub(crate) fn set_weight(&self, weight: u32) {
        self.weight.store(weight.max(1), Ordering::Relaxed);
    }

    /// Whether the host may receive traffic outside panic mode: neither the
    /// active health checker nor outlier detection failed it.
    #[inline]
    pub fn is_healthy(&self) -> bool {
        self.flags.load(Ordering::Acquire) & UNHEALTHY == 0
    }

    /// Whether the active health checker failed the host.
    #[inline]
    pub fn failed_active_hc(&self) -> bool {
        self.flags.load(Ordering::Acquire) & FAILED_ACTIVE_HC != 0
    }

    /// Whether outlier detection ejected the host.
    #[inline]
    pub fn is_ejected(&self) -> bool {
        self.flags.load(Ordering::Acquire) & FAILED_OUTLIER_CHECK != 0
    }

    /// Whether the host left the endpoints and stays only while it passes
    /// active health checks.
    #[inline]
    pub fn pending_removal(&self) -> bool {
        self.flags.load(Ordering::Acquire) & PENDING_DYNAMIC_REMOVAL != 0
    }

    /// Raw health flags ([`FAILED_ACTIVE_HC`], [`ACTIVE_HC_TIMEOUT`],
    /// [`FAILED_OUTLIER_CHECK`], [`PENDING_DYNAMIC_REMOVAL`]).
    pub fn flags(&self) -> u8 {
        self.flags.load(Ordering::Acquire)
    }

    pub(crate) fn set_flag(&self, flag: u8) {
        self.flags.fetch_or(flag, Ordering::AcqRel);
    }

    pub(crate) fn clear_flag(&self, flag: u8) {
        self.flags.fetch_and(!flag, Ordering::AcqRel);
    }

    /// Envoy's `health_flags`: `healthy`, or the flags joined in Envoy's
    /// order (`/failed_active_hc/failed_outlier_check/active_hc_timeout`).
    pub fn health_flags(&self) -> String {
        let flags = self.flags();
        if flags == 0 {
            return "healthy".to_owned();
        }
        let mut s = String::new();
        for (flag, name) in [
            (FAILED_ACTIVE_HC, "/failed_active_hc"),
            (FAILED_OUTLIER_CHECK, "/failed_outlier_check"),
            (PENDING_DYNAMIC_REMOVAL, "/pending_dynamic_removal"),
            (ACTIVE_HC_TIMEOUT, "/active_hc_timeout"),
        ] {
            if flags & flag != 0 {
                s.push_str(name);
            }
        }
        s
    }

    /// Whether the health checker has completed a first check of this host.
    pub fn first_check_done(&self) -> bool {
        self.first_check_done.load(Ordering::Acquire)
    }

    pub(crate) fn mark_first_check_done(&self) {
        self.first_check_done.store(true, Ordering::Release);
    }

    /// Puts the host's active health back in the state of a freshly added
    /// host of a health-checked cluster (used when a cluster gains a health
    /// check). Outlier detection's flag is left alone.
    pub(crate) fn reset_for_health_check(&self) {
        self.clear_flag(ACTIVE_HC_TIMEOUT);
        self.set_flag(FAILED_ACTIVE_HC);
        self.first_check_done.store(false, Ordering::Release);
    }

    /// Clears the active health checker's flags (used when a cluster loses
    /// its health check).
    pub(crate) fn clear_health(&self) {
        self.clear_flag(FAILED_ACTIVE_HC | ACTIVE_HC_TIMEOUT);
    }
}

/// Successes and results of the current interval.
#[derive(Debug, Default)]
pub(crate) struct Bucket {
    success: AtomicU64,
    total: AtomicU64,
}

impl Bucket {
    #[inline]
    pub(crate) fn record(&self, ok: bool) {
        self.total.fetch_add(1, Ordering::Relaxed);
        if ok {
            self.success.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (successes, total) so far, starting a new interval.
    pub(crate) fn take(&self) -> (u64, u64) {
        // Read total first: a result recorded in between is counted in the
        // next interval's total and, at worst, this one's successes.
        let total = self.total.swap(0, Ordering::Relaxed);
        let success = self.success.swap(0, Ordering::Relaxed).min(total);
        (success, total)
    }
}

/// One host's ejection bookkeeping, changed only under the detector's lock.
#[derive(Debug, Default, Clone)]
pub(crate) struct Ejections {
    /// Ejections so far.
    pub(crate) num_ejections: u32,
    /// The ejection time multiplier.
    pub(crate) backoff: u32,
    pub(crate) last_ejection: Option<Instant>,
    pub(crate) last_unejection: Option<Instant>,
    pub(crate) jitter: Duration,
    /// The last interval's (successes, total), external and local origin.
    pub(crate) external: (u64, u64),
    pub(crate) local: (u64, u64),
    /// Success rates `/clusters` shows, when the last interval had enough requests.
    pub(crate) success_rate: Option<f64>,
    pub(crate) local_origin_success_rate: Option<f64>,
}

/// What outlier detection (`outlier`) counts for one host. Kept in the
/// host, so it survives a change of its cluster, as the host's active
/// health does; the detector alone changes it.
#[derive(Debug, Default)]
pub struct HostOutlier {
    pub(crate) consecutive_5xx: AtomicU32,
    pub(crate) consecutive_gateway_failure: AtomicU32,
    pub(crate) consecutive_local_origin_failure: AtomicU32,
    pub(crate) external: Bucket,
    pub(crate) local: Bucket,
    pub(crate) ejections: Mutex<Ejections>,
}

impl HostOutlier {
    pub(crate) fn ejections(&self) -> MutexGuard<'_, Ejections> {
        self.ejections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn reset_consecutive(&self) {
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway_failure.store(0, Ordering::Relaxed);
        self.consecutive_local_origin_failure
            .store(0, Ordering::Relaxed);
    }

    /// Times the host was ejected.
    pub fn num_ejections(&self) -> u32 {
        self.ejections().num_ejections
    }

    /// The success rates (percent) of the last interval, external and local
    /// origin, when it had enough requests to count (`/clusters`).
    pub fn success_rates(&self) -> (Option<f64>, Option<f64>) {
        let e = self.ejections();
        (e.success_rate, e.local_origin_success_rate)
    }

    /// Forgets everything (the host's cluster no longer detects outliers).
    pub(crate) fn clear(&self) {
        self.reset_consecutive();
        self.external.take();
        self.local.take();
        *self.ejections() = Ejections::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_flags_strings() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let h = Host::new(addr, 0, true);
        assert_eq!(h.weight(), 1);
        assert!(!h.is_healthy());
        assert_eq!(h.health_flags(), "/failed_active_hc");
        h.set_flag(ACTIVE_HC_TIMEOUT);
        assert_eq!(h.health_flags(), "/failed_active_hc/active_hc_timeout");
        h.clear_flag(FAILED_ACTIVE_HC);
        assert!(h.is_healthy());
        assert_eq!(h.health_flags(), "/active_hc_timeout");
        h.clear_health();
        assert_eq!(h.health_flags(), "healthy");
        assert_eq!(Host::new(addr, 3, false).health_flags(), "healthy");
        // Outlier detection's flag makes the host unhealthy too; a removed
        // host kept by its health checks is not.
        h.set_flag(PENDING_DYNAMIC_REMOVAL);
        assert!(h.is_healthy());
        assert_eq!(h.health_flags(), "/pending_dynamic_removal");
        h.set_flag(FAILED_OUTLIER_CHECK | FAILED_ACTIVE_HC);
        assert!(!h.is_healthy() && h.is_ejected() && h.pending_removal());
        assert_eq!(
            h.health_flags(),
            "/failed_active_hc/failed_outlier_check/pending_dynamic_removal"
        );
        h.clear_health();
        assert!(!h.is_healthy());
        h.reset_for_health_check();
        assert_eq!(
            h.health_flags(),
            "/failed_active_hc/failed_outlier_check/pending_dynamic_removal"
        );
    }
}
