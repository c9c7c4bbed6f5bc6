//! Outlier detection (passive health checking) with Envoy's semantics.
//!
//! Owns: what one request or connection attempt tells about its host
//! ([`Report`]), and the detector of one cluster version ([`Detector`]):
//! consecutive-error ejections, the interval sweep, the ejection
//! bookkeeping (kept per host in `host::HostOutlier`, so that it outlives a
//! cluster version) and the `outlier_detection.` stats. It flips a host's `/failed_outlier_check` flag and asks the load
//! balancer to rebuild its healthy set, as the active health checker does
//! for `/failed_active_hc`; it owns neither the hosts, nor the host set
//! (`cluster`), nor selection (`lb`).
//!
//! Semantics (Envoy's `outlier_detection_impl`):
//! - a response's status counts towards `consecutive_5xx` (any 5xx) and
//!   `consecutive_gateway_failure` (502, 503, 504); any other status resets
//!   both. The detector fires when a count *reaches* its threshold (0 never
//!   does), and the count then starts over;
//! - local-origin errors (connect failure, timeout, reset before a
//!   response): with `split_external_local_origin_errors` they count towards
//!   `consecutive_local_origin_failure` alone, and a successful connection
//!   resets that count; without it a connect failure or reset counts as a
//!   503 and a timeout as a 504, and the TCP proxy's successful connection
//!   as a 200;
//! - ejecting: a host is ejected only while at most `max_ejection_percent`
//!   of the cluster would be ejected with it (else `ejections_overflow`),
//!   unless `always_eject_one_host` and none is; a detection is enforced
//!   with the probability its `enforcing_*` percentage gives. The n-th
//!   ejection lasts `base_ejection_time` x n, capped by `max_ejection_time`,
//!   plus a random jitter up to `max_ejection_time_jitter`;
//! - every `interval` a sweep returns to service the hosts whose ejection
//!   time has passed (so a host is back within one interval of its time),
//!   runs the success-rate and failure-percentage detectors over the
//!   interval's requests, and lowers by one the multiplier of each host that
//!   was back for at least an interval;
//! - a passed active health check returns an ejected host to service at once
//!   (`successful_active_health_check_uneject_host`, default true).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::model::OutlierDetection;
use crate::upstream::host::{Host, FAILED_OUTLIER_CHECK};
use crate::upstream::lb::{LoadBalancer, Members};
use crate::upstream::stats::ClusterStats;

/// What one request or connection attempt tells about its host (Envoy's
/// `Outlier::Result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// Connected; an exchange follows, whose outcome is reported apart (HTTP).
    ConnectSuccess,
    /// Connected, and that is the whole outcome (the TCP proxy).
    ConnectSuccessFinal,
    /// The connection failed, or broke before a response.
    ConnectFailed,
    /// No answer in time (connect, per-try or route timeout).
    Timeout,
    /// An HTTP response with this status.
    Status(u16),
}

/// Why a host is an outlier (Envoy's `OutlierEjectionType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EjectionType {
    /// `consecutive_5xx`.
    Consecutive5xx,
    /// `consecutive_gateway_failure`.
    ConsecutiveGatewayFailure,
    /// `consecutive_local_origin_failure`.
    ConsecutiveLocalOriginFailure,
    /// Success rate below the cluster's threshold.
    SuccessRate,
    /// The same over local-origin results.
    LocalOriginSuccessRate,
    /// Failure percentage at or above `failure_percentage_threshold`.
    FailurePercentage,
    /// The same over local-origin results.
    LocalOriginFailurePercentage,
}

/// Which results a success rate is computed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    External,
    Local,
}

/// `++counter == threshold`, Envoy's test: fires once when the count reaches
/// the threshold; a threshold of 0 never fires.
#[inline]
fn reaches(counter: &AtomicU32, threshold: u32) -> bool {
    counter.fetch_add(1, Ordering::Relaxed).wrapping_add(1) == threshold
}

/// Whether a detection with this `enforcing_*` percentage is enforced.
fn enforced(percent: u32) -> bool {
    match percent {
        0 => false,
        p if p >= 100 => true,
        p => rand::random::<u32>() % 100 < p,
    }
}

/// The outlier detector of one cluster version.
#[derive(Debug)]
pub struct Detector {
    cfg: OutlierDetection,
    stats: Arc<ClusterStats>,
    lb: Weak<LoadBalancer>,
    /// Serialises ejection decisions and sweeps. The request path takes it
    /// only when a consecutive-error count reaches its threshold.
    lock: Mutex<()>,
}

impl Detector {
    /// A detector for the hosts `lb` balances over.
    pub fn new(cfg: OutlierDetection, stats: Arc<ClusterStats>, lb: Weak<LoadBalancer>) -> Self {
        Detector {
            cfg,
            stats,
            lb,
            lock: Mutex::new(()),
        }
    }

    /// The settings.
    pub fn config(&self) -> &OutlierDetection {
        &self.cfg
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records what an attempt to `host` gave. Atomics only, unless a
    /// consecutive-error count reaches its threshold.
    #[inline]
    pub fn report(&self, host: &Host, r: Report) {
        let split = self.cfg.split_external_local_origin_errors;
        match r {
            Report::Status(code) => self.response(host, code),
            Report::ConnectSuccess | Report::ConnectSuccessFinal if split => {
                self.local_origin(host, false)
            }
            Report::ConnectFailed | Report::Timeout if split => self.local_origin(host, true),
            // An HTTP exchange follows and will be reported.
            Report::ConnectSuccess => {}
            Report::ConnectSuccessFinal => self.response(host, 200),
            Report::ConnectFailed => self.response(host, 503),
            Report::Timeout => self.response(host, 504),
        }
    }

    fn response(&self, host: &Host, code: u16) {
        let o = &host.outlier;
        let is_5xx = (500..600).contains(&code);
        o.external.record(!is_5xx);
        if !is_5xx {
            o.consecutive_5xx.store(0, Ordering::Relaxed);
            o.consecutive_gateway_failure.store(0, Ordering::Relaxed);
            return;
        }
        if matches!(code, 502..=504) {
            if reaches(
                &o.consecutive_gateway_failure,
                self.cfg.consecutive_gateway_failure,
            ) {
                self.consecutive(host, EjectionType::ConsecutiveGatewayFailure);
            }
        } else {
            o.consecutive_gateway_failure.store(0, Ordering::Relaxed);
        }
        if reaches(&o.consecutive_5xx, self.cfg.consecutive_5xx) {
            self.consecutive(host, EjectionType::Consecutive5xx);
        }
    }

    fn local_origin(&self, host: &Host, failed: bool) {
        let o = &host.outlier;
        o.local.record(!failed);
        if !failed {
            o.consecutive_local_origin_failure
                .store(0, Ordering::Relaxed);
        } else if reaches(
            &o.consecutive_local_origin_failure,
            self.cfg.consecutive_local_origin_failure,
        ) {
            self.consecutive(host, EjectionType::ConsecutiveLocalOriginFailure);
        }
    }

    /// A consecutive-error count reached its threshold.
    fn consecutive(&self, host: &Host, kind: EjectionType) {
        let Some(lb) = self.lb.upgrade() else { return };
        let _g = self.lock();
        let members = lb.members();
        // The host may have left the cluster since the request started.
        if !members
            .hosts()
            .iter()
            .any(|h| std::ptr::eq(h.as_ref(), host))
        {
            return;
        }
        if host.is_ejected() {
            return;
        }
        self.count_detected(kind);
        let ejected = self.eject(host, kind, &members, Instant::now());
        // The count starts over, so that a new run of errors is seen even
        // without a success in between.
        let o = &host.outlier;
        match kind {
            EjectionType::Consecutive5xx => {
                self.stats.od_ejections_consecutive_5xx.inc();
                o.consecutive_5xx.store(0, Ordering::Relaxed);
            }
            EjectionType::ConsecutiveGatewayFailure => {
                o.consecutive_gateway_failure.store(0, Ordering::Relaxed)
            }
            _ => o
                .consecutive_local_origin_failure
                .store(0, Ordering::Relaxed),
        }
        if ejected {
            lb.refresh();
        }
    }

    /// Ejects `host` if `max_ejection_percent` allows and the detection is
    /// enforced; says whether it did. Under the lock.
    fn eject(&self, host: &Host, kind: EjectionType, members: &Members, now: Instant) -> bool {
        let total = members.hosts().len().max(1);
        let active = members.hosts().iter().filter(|h| h.is_ejected()).count();
        let percent = 100.0 * (active + 1) as f64 / total as f64;
        let allowed = percent <= f64::from(self.cfg.max_ejection_percent)
            || (self.cfg.always_eject_one_host && active == 0);
        if !allowed {
            self.stats.od_ejections_overflow.inc();
            return false;
        }
        if matches!(
            kind,
            EjectionType::Consecutive5xx | EjectionType::SuccessRate
        ) {
            // Envoy's deprecated total, kept for dashboards that read it.
            self.stats.od_ejections_total.inc();
        }
        if !enforced(self.enforcing(kind)) {
            return false;
        }
        self.count_enforced(kind);
        host.set_flag(FAILED_OUTLIER_CHECK);
        let mut e = host.outlier.ejections();
        e.num_ejections += 1;
        e.last_ejection = Some(now);
        let jitter_ms =
            u64::try_from(self.cfg.max_ejection_time_jitter.as_millis()).unwrap_or(u64::MAX);
        e.jitter = Duration::from_millis(match jitter_ms {
            0 => 0,
            j => rand::random::<u64>() % j.saturating_add(1),
        });
        // The multiplier grows until the ejection time reaches the maximum.
        if self.cfg.base_ejection_time * e.backoff
            < self.cfg.max_ejection_time + self.cfg.base_ejection_time
        {
            e.backoff += 1;
        }
        tracing::info!(host = %host.addr(), ?kind, ejections = e.num_ejections, "outlier detection ejected host");
        true
    }

    fn uneject(&self, host: &Host, now: Instant) {
        host.clear_flag(FAILED_OUTLIER_CHECK);
        // Counts close to their threshold would eject again on very few errors.
        host.outlier.reset_consecutive();
        host.outlier.ejections().last_unejection = Some(now);
        tracing::info!(host = %host.addr(), "outlier detection returned host to service");
    }

    fn enforcing(&self, kind: EjectionType) -> u32 {
        let c = &self.cfg;
        match kind {
            EjectionType::Consecutive5xx => c.enforcing_consecutive_5xx,
            EjectionType::ConsecutiveGatewayFailure => c.enforcing_consecutive_gateway_failure,
            EjectionType::ConsecutiveLocalOriginFailure => {
                c.enforcing_consecutive_local_origin_failure
            }
            EjectionType::SuccessRate => c.enforcing_success_rate,
            EjectionType::LocalOriginSuccessRate => c.enforcing_local_origin_success_rate,
            EjectionType::FailurePercentage => c.enforcing_failure_percentage,
            EjectionType::LocalOriginFailurePercentage => {
                c.enforcing_failure_percentage_local_origin
            }
        }
    }

    fn count_detected(&self, kind: EjectionType) {
        let s = &self.stats;
        match kind {
            EjectionType::Consecutive5xx => s.od_detected_consecutive_5xx.inc(),
            EjectionType::ConsecutiveGatewayFailure => {
                s.od_detected_consecutive_gateway_failure.inc()
            }
            EjectionType::ConsecutiveLocalOriginFailure => {
                s.od_detected_consecutive_local_origin_failure.inc()
            }
            EjectionType::SuccessRate => s.od_detected_success_rate.inc(),
            EjectionType::LocalOriginSuccessRate => s.od_detected_local_origin_success_rate.inc(),
            EjectionType::FailurePercentage => s.od_detected_failure_percentage.inc(),
            EjectionType::LocalOriginFailurePercentage => {
                s.od_detected_local_origin_failure_percentage.inc()
            }
        }
    }

    fn count_enforced(&self, kind: EjectionType) {
        let s = &self.stats;
        s.od_enforced_total.inc();
        match kind {
            EjectionType::Consecutive5xx => s.od_enforced_consecutive_5xx.inc(),
            EjectionType::ConsecutiveGatewayFailure => {
                s.od_enforced_consecutive_gateway_failure.inc()
            }
            EjectionType::ConsecutiveLocalOriginFailure => {
                s.od_enforced_consecutive_local_origin_failure.inc()
            }
            EjectionType::SuccessRate => s.od_enforced_success_rate.inc(),
            EjectionType::LocalOriginSuccessRate => s.od_enforced_local_origin_success_rate.inc(),
            EjectionType::FailurePercentage => s.od_enforced_failure_percentage.inc(),
            EjectionType::LocalOriginFailurePercentage => {
                s.od_enforced_local_origin_failure_percentage.inc()
            }
        }
    }

    /// An active health check of `host` passed: an ejected host returns to
    /// service at once, unless `successful_active_health_check_uneject_host`
    /// is false.
    pub fn on_active_check_passed(&self, host: &Host) {
        if !self.cfg.successful_active_health_check_uneject_host
            || host.failed_active_hc()
            || !host.is_ejected()
        {
            return;
        }
        let Some(lb) = self.lb.upgrade() else { return };
        {
            let _g = self.lock();
            if !host.is_ejected() {
                return;
            }
            self.uneject(host, Instant::now());
        }
        lb.refresh();
    }

    /// One interval sweep at `now` (see the module docs).
    pub fn sweep(&self, now: Instant) {
        let Some(lb) = self.lb.upgrade() else { return };
        let changed = {
            let _g = self.lock();
            let members = lb.members();
            let mut changed = false;
            for h in members.hosts() {
                if h.is_ejected() {
                    let e = h.outlier.ejections().clone();
                    let time = (self.cfg.base_ejection_time * e.backoff)
                        .min(self.cfg.max_ejection_time)
                        + e.jitter;
                    if e.last_ejection
                        .is_none_or(|at| now.duration_since(at) >= time)
                    {
                        self.uneject(h, now);
                        changed = true;
                    }
                }
                let (external, local) = (h.outlier.external.take(), h.outlier.local.take());
                let mut e = h.outlier.ejections();
                e.external = external;
                e.local = local;
                e.success_rate = None;
                e.local_origin_success_rate = None;
            }
            changed |= self.success_rate_ejections(&members, Origin::External, now);
            changed |= self.success_rate_ejections(&members, Origin::Local, now);
            for h in members.hosts() {
                if h.is_ejected() {
                    continue;
                }
                let mut e = h.outlier.ejections();
                let back_for_an_interval = e
                    .last_unejection
                    .is_some_and(|at| now.duration_since(at) >= self.cfg.interval);
                if back_for_an_interval && e.backoff > 0 {
                    e.backoff -= 1;
                }
            }
            changed
        };
        if changed {
            lb.refresh();
        }
    }

    /// The success-rate and failure-percentage detectors over the last
    /// interval's results of one origin; says whether a host was ejected.
    fn success_rate_ejections(&self, members: &Members, origin: Origin, now: Instant) -> bool {
        let c = &self.cfg;
        let hosts = members.hosts();
        if hosts.len() < c.success_rate_minimum_hosts as usize
            && hosts.len() < c.failure_percentage_minimum_hosts as usize
        {
            return false;
        }
        let (sr_volume, fp_volume) = (
            u64::from(c.success_rate_request_volume),
            u64::from(c.failure_percentage_request_volume),
        );
        let mut for_sr: Vec<(&Arc<Host>, f64)> = Vec::new();
        let mut for_fp: Vec<(&Arc<Host>, f64)> = Vec::new();
        let mut sum = 0.0;
        for h in hosts.iter().filter(|h| !h.is_ejected()) {
            let mut e = h.outlier.ejections();
            let (success, total) = match origin {
                Origin::External => e.external,
                Origin::Local => e.local,
            };
            if total == 0 {
                continue;
            }
            let rate = success as f64 * 100.0 / total as f64;
            if total >= sr_volume.min(fp_volume) {
                match origin {
                    Origin::External => e.success_rate = Some(rate),
                    Origin::Local => e.local_origin_success_rate = Some(rate),
                }
            }
            if total >= sr_volume {
                for_sr.push((h, rate));
                sum += rate;
            }
            if total >= fp_volume {
                for_fp.push((h, rate));
            }
        }
        let mut changed = false;
        if !for_sr.is_empty() && for_sr.len() >= c.success_rate_minimum_hosts as usize {
            let n = for_sr.len() as f64;
            let mean = sum / n;
            let variance = for_sr.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / n;
            let threshold =
                mean - f64::from(c.success_rate_stdev_factor) / 1000.0 * variance.sqrt();
            let kind = match origin {
                Origin::External => EjectionType::SuccessRate,
                Origin::Local => EjectionType::LocalOriginSuccessRate,
            };
            for (h, rate) in &for_sr {
                if *rate < threshold && !h.is_ejected() {
                    self.stats.od_ejections_success_rate.inc();
                    self.count_detected(kind);
                    changed |= self.eject(h, kind, members, now);
                }
            }
        }
        if !for_fp.is_empty() && for_fp.len() >= c.failure_percentage_minimum_hosts as usize {
            let kind = match origin {
                Origin::External => EjectionType::FailurePercentage,
                Origin::Local => EjectionType::LocalOriginFailurePercentage,
            };
            for (h, rate) in &for_fp {
                if 100.0 - rate >= f64::from(c.failure_percentage_threshold) && !h.is_ejected() {
                    self.count_detected(kind);
                    changed |= self.eject(h, kind, members, now);
                }
            }
        }
        changed
    }

    /// Sweeps every `interval` until `token` is cancelled.
    pub async fn run(self: Arc<Self>, token: CancellationToken) {
        loop {
            tokio::select! {
                biased;
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(self.cfg.interval) => {}
            }
            self.sweep(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::host::FAILED_ACTIVE_HC;

    fn hosts(n: u16) -> Vec<Arc<Host>> {
        (0..n)
            .map(|i| {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 1000 + i));
                Arc::new(Host::new(addr, 1, false))
            })
            .collect()
    }

    struct Setup {
        hosts: Vec<Arc<Host>>,
        lb: Arc<LoadBalancer>,
        stats: Arc<ClusterStats>,
        d: Detector,
    }

    fn setup(n: u16, cfg: OutlierDetection) -> Setup {
        let hosts = hosts(n);
        let lb = Arc::new(LoadBalancer::new(hosts.clone(), 0.0, 0));
        let stats = Arc::new(ClusterStats::default());
        let d = Detector::new(cfg, stats.clone(), Arc::downgrade(&lb));
        Setup {
            hosts,
            lb,
            stats,
            d,
        }
    }

    fn picks(lb: &LoadBalancer, n: usize) -> Vec<u16> {
        let mut v: Vec<u16> = (0..n)
            .filter_map(|_| lb.pick().map(|h| h.addr().port()))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    fn cfg() -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx: 3,
            max_ejection_percent: 50,
            interval: Duration::from_secs(1),
            base_ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(25),
            ..OutlierDetection::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_5xx_ejects_then_the_sweep_readmits_with_growing_times() {
        let s = setup(3, cfg());
        let h = &s.hosts[1];
        let r5 = Report::Status(500);
        // A success in between starts the count over.
        s.d.report(h, r5);
        s.d.report(h, r5);
        s.d.report(h, Report::Status(404));
        s.d.report(h, r5);
        s.d.report(h, r5);
        assert!(!h.is_ejected());
        s.d.report(h, r5);
        assert!(h.is_ejected());
        assert_eq!(h.health_flags(), "/failed_outlier_check");
        assert_eq!(picks(&s.lb, 6), vec![1000, 1002], "the lb skips it");
        assert_eq!(s.stats.od_detected_consecutive_5xx.get(), 1);
        assert_eq!(s.stats.od_enforced_consecutive_5xx.get(), 1);
        assert_eq!(s.stats.od_enforced_total.get(), 1);

        // Sweeps before the ejection time leave it out; the first after returns it.
        let t0 = Instant::now();
        for _ in 0..9 {
            tokio::time::advance(Duration::from_secs(1)).await;
            s.d.sweep(Instant::now());
        }
        assert!(h.is_ejected());
        tokio::time::advance(Duration::from_secs(1)).await;
        s.d.sweep(Instant::now());
        assert!(!h.is_ejected(), "back after base_ejection_time");
        assert_eq!(t0.elapsed(), Duration::from_secs(10));
        assert_eq!(picks(&s.lb, 6), vec![1000, 1001, 1002]);

        // Ejected again at once: twice as long (20 s).
        for _ in 0..3 {
            s.d.report(h, r5);
        }
        assert!(h.is_ejected());
        for _ in 0..19 {
            tokio::time::advance(Duration::from_secs(1)).await;
            s.d.sweep(Instant::now());
        }
        assert!(h.is_ejected());
        tokio::time::advance(Duration::from_secs(1)).await;
        s.d.sweep(Instant::now());
        assert!(!h.is_ejected());
        // A third time: 30 s, capped at max_ejection_time (25 s).
        for _ in 0..3 {
            s.d.report(h, r5);
        }
        for _ in 0..24 {
            tokio::time::advance(Duration::from_secs(1)).await;
            s.d.sweep(Instant::now());
        }
        assert!(h.is_ejected());
        tokio::time::advance(Duration::from_secs(1)).await;
        s.d.sweep(Instant::now());
        assert!(!h.is_ejected());
        assert_eq!(h.outlier.num_ejections(), 3);
        assert_eq!(h.outlier.ejections().backoff, 3);
        // Each interval back in service lowers the multiplier by one.
        for _ in 0..2 {
            tokio::time::advance(Duration::from_secs(1)).await;
            s.d.sweep(Instant::now());
        }
        assert_eq!(h.outlier.ejections().backoff, 1);
        for _ in 0..3 {
            s.d.report(h, r5);
        }
        for _ in 0..19 {
            tokio::time::advance(Duration::from_secs(1)).await;
            s.d.sweep(Instant::now());
        }
        assert!(h.is_ejected(), "multiplier 2: 20 s");
        tokio::time::advance(Duration::from_secs(1)).await;
        s.d.sweep(Instant::now());
        assert!(!h.is_ejected());
    }

    #[tokio::test(start_paused = true)]
    async fn max_ejection_percent_and_always_eject_one_host() {
        let r5 = Report::Status(503);
        // Envoy's 10 %: one of three is 33 %, so nothing is ejected.
        let s = setup(
            3,
            OutlierDetection {
                consecutive_5xx: 1,
                ..OutlierDetection::default()
            },
        );
        s.d.report(&s.hosts[0], r5);
        assert!(!s.hosts[0].is_ejected());
        assert_eq!(s.stats.od_ejections_overflow.get(), 1);
        assert_eq!(s.stats.od_detected_consecutive_5xx.get(), 1);
        // Unless at least one host may always go.
        let s = setup(
            3,
            OutlierDetection {
                consecutive_5xx: 1,
                always_eject_one_host: true,
                ..OutlierDetection::default()
            },
        );
        s.d.report(&s.hosts[0], r5);
        s.d.report(&s.hosts[1], r5);
        assert!(s.hosts[0].is_ejected());
        assert!(!s.hosts[1].is_ejected());
        assert_eq!(s.stats.od_ejections_overflow.get(), 1);
        // 50 % of four: two go, the third overflows.
        let s = setup(
            4,
            OutlierDetection {
                consecutive_5xx: 1,
                max_ejection_percent: 50,
                ..OutlierDetection::default()
            },
        );
        for h in &s.hosts[..3] {
            s.d.report(h, r5);
        }
        let ejected = s.hosts.iter().filter(|h| h.is_ejected()).count();
        assert_eq!(ejected, 2);
        assert_eq!(s.stats.od_ejections_overflow.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn local_origin_errors_split_or_mapped_to_5xx() {
        // Not split: a connect failure is a 503, a timeout a 504: both count
        // towards consecutive_5xx and the (by default unenforced) gateway detector.
        let s = setup(
            3,
            OutlierDetection {
                consecutive_gateway_failure: 2,
                ..cfg()
            },
        );
        let h = &s.hosts[0];
        s.d.report(h, Report::ConnectFailed);
        s.d.report(h, Report::Timeout);
        assert_eq!(s.stats.od_detected_consecutive_gateway_failure.get(), 1);
        assert!(
            !h.is_ejected(),
            "enforcing_consecutive_gateway_failure is 0"
        );
        // The TCP proxy's successful connection is a 200: the count starts over.
        s.d.report(h, Report::ConnectSuccessFinal);
        s.d.report(h, Report::ConnectFailed);
        s.d.report(h, Report::ConnectSuccess); // HTTP: not a result on its own
        s.d.report(h, Report::ConnectFailed);
        assert!(!h.is_ejected());
        s.d.report(h, Report::ConnectFailed);
        assert!(h.is_ejected());
        assert_eq!(s.stats.od_enforced_consecutive_5xx.get(), 1);

        // Split: local-origin errors have their own count, reset by a connection.
        let s = setup(
            3,
            OutlierDetection {
                split_external_local_origin_errors: true,
                consecutive_local_origin_failure: 2,
                ..cfg()
            },
        );
        let h = &s.hosts[0];
        s.d.report(h, Report::ConnectFailed);
        s.d.report(h, Report::ConnectSuccess);
        s.d.report(h, Report::ConnectFailed);
        s.d.report(h, Report::Status(503));
        s.d.report(h, Report::Status(503));
        assert!(
            !h.is_ejected(),
            "5xx responses do not count as local origin"
        );
        s.d.report(h, Report::Timeout);
        assert!(h.is_ejected());
        assert_eq!(
            s.stats.od_enforced_consecutive_local_origin_failure.get(),
            1
        );
        assert_eq!(s.stats.od_enforced_consecutive_5xx.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn success_rate_and_failure_percentage() {
        let report = |d: &Detector, h: &Host, ok: u32, bad: u32| {
            for _ in 0..ok {
                d.report(h, Report::Status(200));
            }
            for _ in 0..bad {
                d.report(h, Report::Status(503));
            }
        };
        // Five hosts with 100 requests: four all good, one at 50 % is an outlier.
        let cfg = OutlierDetection {
            consecutive_5xx: 0,
            consecutive_gateway_failure: 0,
            max_ejection_percent: 100,
            ..OutlierDetection::default()
        };
        let s = setup(5, cfg.clone());
        for h in &s.hosts[..4] {
            report(&s.d, h, 100, 0);
        }
        // Interleaved, so no consecutive detector would fire anyway.
        for _ in 0..50 {
            report(&s.d, &s.hosts[4], 1, 1);
        }
        assert!(!s.hosts[4].is_ejected(), "only the sweep looks at rates");
        s.d.sweep(Instant::now());
        assert!(s.hosts[4].is_ejected());
        assert_eq!(s.stats.od_enforced_success_rate.get(), 1);
        assert_eq!(s.hosts[0].outlier.success_rates().0, Some(100.0));
        // Too few requests: no analysis.
        let s = setup(5, cfg.clone());
        for h in &s.hosts[..4] {
            report(&s.d, h, 99, 0);
        }
        report(&s.d, &s.hosts[4], 0, 99);
        s.d.sweep(Instant::now());
        assert!(!s.hosts[4].is_ejected());
        // Failure percentage: detected at 85 %, enforced only when asked.
        let s = setup(
            5,
            OutlierDetection {
                enforcing_success_rate: 0,
                ..cfg.clone()
            },
        );
        for h in &s.hosts[..4] {
            report(&s.d, h, 60, 0);
        }
        report(&s.d, &s.hosts[4], 5, 55);
        s.d.sweep(Instant::now());
        assert!(!s.hosts[4].is_ejected());
        assert_eq!(s.stats.od_detected_failure_percentage.get(), 1);
        let s = setup(
            5,
            OutlierDetection {
                enforcing_success_rate: 0,
                enforcing_failure_percentage: 100,
                ..cfg
            },
        );
        for h in &s.hosts[..4] {
            report(&s.d, h, 60, 0);
        }
        report(&s.d, &s.hosts[4], 5, 55);
        s.d.sweep(Instant::now());
        assert!(s.hosts[4].is_ejected());
        assert_eq!(s.stats.od_enforced_failure_percentage.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_passed_health_check_returns_the_host() {
        let s = setup(3, cfg());
        let h = &s.hosts[2];
        for _ in 0..3 {
            s.d.report(h, Report::Status(502));
        }
        assert!(h.is_ejected());
        // Still failed by the active checker: stays out.
        h.set_flag(FAILED_ACTIVE_HC);
        s.d.on_active_check_passed(h);
        assert!(h.is_ejected());
        h.clear_flag(FAILED_ACTIVE_HC);
        s.d.on_active_check_passed(h);
        assert!(!h.is_ejected());
        assert_eq!(picks(&s.lb, 6), vec![1000, 1001, 1002]);
        // Not when told otherwise.
        let s = setup(
            3,
            OutlierDetection {
                successful_active_health_check_uneject_host: false,
                ..cfg()
            },
        );
        for _ in 0..3 {
            s.d.report(&s.hosts[0], Report::Status(500));
        }
        s.d.on_active_check_passed(&s.hosts[0]);
        assert!(s.hosts[0].is_ejected());
    }

    #[tokio::test(start_paused = true)]
    async fn the_interval_task_sweeps() {
        let s = setup(3, cfg());
        let d = Arc::new(s.d);
        let token = CancellationToken::new();
        let task = tokio::spawn(d.clone().run(token.clone()));
        for _ in 0..3 {
            d.report(&s.hosts[0], Report::Status(500));
        }
        assert!(s.hosts[0].is_ejected());
        // base 10 s; sweeps every second.
        tokio::time::sleep(Duration::from_millis(9_500)).await;
        assert!(s.hosts[0].is_ejected());
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!s.hosts[0].is_ejected());
        token.cancel();
        task.await.unwrap();
        drop(s.lb);
    }
}
