//! A cluster's stats (Envoy's `cluster.<name>.`), shared by every version
//! of the cluster and by every part of `upstream` that counts: connecting,
//! the HTTP pools, health checks, outlier detection, DNS and retries. Kept
//! apart from `cluster` so that those parts need not import the cluster.

use crate::stats::{stats_struct, Counter, Gauge};

stats_struct! {
    /// Envoy's `cluster.<name>.` stats (computed gauges such as
    /// `membership_total` are added by `Cluster::collect_stats`).
    pub struct ClusterStats {
        upstream_cx_total: Counter => "upstream_cx_total",
        upstream_cx_active: Gauge => "upstream_cx_active",
        upstream_cx_overflow: Counter => "upstream_cx_overflow",
        upstream_cx_connect_fail: Counter => "upstream_cx_connect_fail",
        upstream_cx_connect_timeout: Counter => "upstream_cx_connect_timeout",
        upstream_cx_none_healthy: Counter => "upstream_cx_none_healthy",
        upstream_cx_rx_bytes_total: Counter => "upstream_cx_rx_bytes_total",
        upstream_cx_tx_bytes_total: Counter => "upstream_cx_tx_bytes_total",
        upstream_rq_total: Counter => "upstream_rq_total",
        upstream_rq_active: Gauge => "upstream_rq_active",
        upstream_rq_pending_total: Counter => "upstream_rq_pending_total",
        upstream_rq_pending_active: Gauge => "upstream_rq_pending_active",
        upstream_rq_pending_overflow: Counter => "upstream_rq_pending_overflow",
        upstream_rq_timeout: Counter => "upstream_rq_timeout",
        upstream_rq_1xx: Counter => "upstream_rq_1xx",
        upstream_rq_2xx: Counter => "upstream_rq_2xx",
        upstream_rq_3xx: Counter => "upstream_rq_3xx",
        upstream_rq_4xx: Counter => "upstream_rq_4xx",
        upstream_rq_5xx: Counter => "upstream_rq_5xx",
        hc_attempt: Counter => "health_check.attempt",
        hc_success: Counter => "health_check.success",
        hc_failure: Counter => "health_check.failure",
        hc_network_failure: Counter => "health_check.network_failure",
        update_attempt: Counter => "update_attempt",
        update_success: Counter => "update_success",
        update_failure: Counter => "update_failure",
        upstream_rq_retry: Counter => "upstream_rq_retry",
        upstream_rq_retry_success: Counter => "upstream_rq_retry_success",
        upstream_rq_retry_overflow: Counter => "upstream_rq_retry_overflow",
        upstream_rq_retry_limit_exceeded: Counter => "upstream_rq_retry_limit_exceeded",
        upstream_rq_retry_backoff_exponential: Counter => "upstream_rq_retry_backoff_exponential",
        upstream_rq_per_try_timeout: Counter => "upstream_rq_per_try_timeout",
        retry_or_shadow_abandoned: Counter => "retry_or_shadow_abandoned",
        // Outlier detection (shown only for clusters that have it; see
        // `Cluster::collect_stats`). `ejections_active` is computed.
        od_enforced_total: Counter => "outlier_detection.ejections_enforced_total",
        od_ejections_overflow: Counter => "outlier_detection.ejections_overflow",
        od_enforced_consecutive_5xx: Counter => "outlier_detection.ejections_enforced_consecutive_5xx",
        od_detected_consecutive_5xx: Counter => "outlier_detection.ejections_detected_consecutive_5xx",
        od_enforced_consecutive_gateway_failure: Counter => "outlier_detection.ejections_enforced_consecutive_gateway_failure",
        od_detected_consecutive_gateway_failure: Counter => "outlier_detection.ejections_detected_consecutive_gateway_failure",
        od_enforced_consecutive_local_origin_failure: Counter => "outlier_detection.ejections_enforced_consecutive_local_origin_failure",
        od_detected_consecutive_local_origin_failure: Counter => "outlier_detection.ejections_detected_consecutive_local_origin_failure",
        od_enforced_success_rate: Counter => "outlier_detection.ejections_enforced_success_rate",
        od_detected_success_rate: Counter => "outlier_detection.ejections_detected_success_rate",
        od_enforced_local_origin_success_rate: Counter => "outlier_detection.ejections_enforced_local_origin_success_rate",
        od_detected_local_origin_success_rate: Counter => "outlier_detection.ejections_detected_local_origin_success_rate",
        od_enforced_failure_percentage: Counter => "outlier_detection.ejections_enforced_failure_percentage",
        od_detected_failure_percentage: Counter => "outlier_detection.ejections_detected_failure_percentage",
        od_enforced_local_origin_failure_percentage: Counter => "outlier_detection.ejections_enforced_local_origin_failure_percentage",
        od_detected_local_origin_failure_percentage: Counter => "outlier_detection.ejections_detected_local_origin_failure_percentage",
        // Envoy's deprecated totals, still emitted by Envoy 1.40.
        od_ejections_total: Counter => "outlier_detection.ejections_total",
        od_ejections_consecutive_5xx: Counter => "outlier_detection.ejections_consecutive_5xx",
        od_ejections_success_rate: Counter => "outlier_detection.ejections_success_rate",
    }
}

impl ClusterStats {
    /// Whether the cluster ever opened an upstream connection (Envoy uses
    /// `no_traffic_interval` until then).
    pub fn had_traffic(&self) -> bool {
        self.upstream_cx_total.get() > 0
    }

    /// Counts a response status in `upstream_rq_<N>xx`.
    #[inline]
    pub fn count_status(&self, status: u16) {
        match status / 100 {
            1 => self.upstream_rq_1xx.inc(),
            2 => self.upstream_rq_2xx.inc(),
            3 => self.upstream_rq_3xx.inc(),
            4 => self.upstream_rq_4xx.inc(),
            _ => self.upstream_rq_5xx.inc(),
        }
    }
}
