//! The router's retry decisions (Envoy's `RetryStateImpl`).
//!
//! Owns: which failed attempts a route's retry policy retries
//! ([`would_retry`]), one request's retry budget ([`RetryState`]:
//! `num_retries`, and a place under the cluster's `max_retries` circuit
//! breaker held from the decision until the retried attempt ends), the
//! jittered exponential back-off between attempts, and the stats of these
//! decisions (`upstream_rq_retry`, `_success`, `_overflow`,
//! `_limit_exceeded`). Does not send requests or pick hosts (`http`,
//! `upstream`).
//!
//! Envoy's rules, kept as they are:
//! - a connect failure is retried under `connect-failure`, `reset`, `5xx`
//!   and `gateway-error`; a reset before the response and a per-try timeout
//!   under `reset`, `5xx` and `gateway-error`; a response under `5xx` (any
//!   5xx), `gateway-error` (502, 503, 504) and `retriable-status-codes`;
//! - a response carrying `x-envoy-overloaded` and a request refused by a
//!   circuit breaker are never retried; the route timeout ends all attempts;
//! - the n-th retry waits a random time below `base_interval * 2^(n-1)`,
//!   capped at `max_interval`;
//! - `upstream_rq_retry_success` counts requests whose retried attempt gave
//!   an answer that is not retried again.

use std::sync::Arc;
use std::time::Duration;

use crate::model::RetryPolicy;
use crate::upstream::{Cluster, RetryGuard};

/// How an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The connection to the host failed or timed out.
    ConnectFailure,
    /// The connection broke before response headers.
    Reset,
    /// No response headers within `per_try_timeout`.
    PerTryTimeout,
    /// A response that may be retried; `overloaded` when it carries
    /// `x-envoy-overloaded`.
    Response {
        /// Its status.
        status: u16,
        /// Whether the upstream said it is overloaded.
        overloaded: bool,
    },
    /// A circuit breaker refused the request.
    Overflow,
}

/// Whether `policy` retries an attempt that failed so.
pub fn would_retry(policy: &RetryPolicy, f: Failure) -> bool {
    let on = &policy.retry_on;
    let no_response = on.status_5xx || on.gateway_error || on.reset;
    match f {
        Failure::Overflow => false,
        Failure::ConnectFailure => no_response || on.connect_failure,
        Failure::Reset | Failure::PerTryTimeout => no_response,
        Failure::Response {
            overloaded: true, ..
        } => false,
        Failure::Response { status, .. } => {
            (on.status_5xx && (500..600).contains(&status))
                || (on.gateway_error && matches!(status, 502..=504))
                || (on.retriable_status_codes && policy.retriable_status_codes.contains(&status))
        }
    }
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Retry after this back-off.
    Retry(Duration),
    /// The policy does not retry this.
    No,
    /// `num_retries` are spent.
    LimitExceeded,
    /// The cluster's `max_retries` circuit breaker is open.
    Overflow,
}

/// Jittered exponential back-off: a random time below the current interval,
/// which doubles after each retry up to `max`.
#[derive(Debug)]
struct BackOff {
    next_ms: u64,
    max_ms: u64,
}

impl BackOff {
    fn new(base: Duration, max: Duration) -> BackOff {
        let base_ms = u64::try_from(base.as_millis()).unwrap_or(u64::MAX).max(1);
        let max_ms = u64::try_from(max.as_millis())
            .unwrap_or(u64::MAX)
            .max(base_ms);
        BackOff {
            next_ms: base_ms,
            max_ms,
        }
    }

    fn next(&mut self) -> Duration {
        let interval = self.next_ms;
        self.next_ms = if self.next_ms > self.max_ms / 2 {
            self.max_ms
        } else {
            self.next_ms * 2
        };
        Duration::from_millis((rand::random::<u64>() % interval).min(self.max_ms))
    }
}

/// One request's retries.
#[derive(Debug)]
pub struct RetryState {
    policy: Arc<RetryPolicy>,
    remaining: u32,
    back_off: BackOff,
    /// The place of the retry under way, if the current attempt is one.
    retrying: Option<RetryGuard>,
}

impl RetryState {
    /// No retry made yet.
    pub fn new(policy: Arc<RetryPolicy>) -> RetryState {
        RetryState {
            remaining: policy.num_retries,
            back_off: BackOff::new(policy.base_interval, policy.max_interval),
            policy,
            retrying: None,
        }
    }

    /// The policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// Decides after an attempt whose failure `would_retry` under the policy
    /// (false for an answer that ends the request), counting the cluster's
    /// retry stats.
    pub fn decide(&mut self, cluster: &Arc<Cluster>, would: bool) -> Decision {
        let stats = cluster.stats();
        // The retried attempt ended: its place is free, and an answer that
        // is not retried again makes it a success.
        if self.retrying.take().is_some() && !would {
            stats.upstream_rq_retry_success.inc();
        }
        if !would {
            return Decision::No;
        }
        if self.remaining == 0 {
            stats.upstream_rq_retry_limit_exceeded.inc();
            return Decision::LimitExceeded;
        }
        self.remaining -= 1;
        let Some(place) = cluster.try_retry() else {
            stats.upstream_rq_retry_overflow.inc();
            return Decision::Overflow;
        };
        self.retrying = Some(place);
        stats.upstream_rq_retry.inc();
        stats.upstream_rq_retry_backoff_exponential.inc();
        Decision::Retry(self.back_off.next())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{self, Discovery, LoadAssignment, RetryOn};
    use crate::upstream::ClusterStats;
    use tokio_util::sync::CancellationToken;

    fn policy(on: RetryOn, num_retries: u32) -> RetryPolicy {
        RetryPolicy {
            retry_on: on,
            num_retries,
            per_try_timeout: None,
            retriable_status_codes: vec![409],
            base_interval: Duration::from_millis(25),
            max_interval: Duration::from_millis(250),
            previous_hosts: false,
            host_selection_retry_max_attempts: 1,
        }
    }

    #[test]
    fn what_each_condition_retries() {
        use Failure::*;
        let resp = |status| Response {
            status,
            overloaded: false,
        };
        let failures = [
            ConnectFailure,
            Reset,
            PerTryTimeout,
            resp(500),
            resp(502),
            resp(503),
            resp(504),
            resp(409),
            resp(404),
            Response {
                status: 503,
                overloaded: true,
            },
            Overflow,
        ];
        let on = |f: fn(&mut RetryOn)| {
            let mut o = RetryOn::default();
            f(&mut o);
            o
        };
        // Per condition: which of `failures` it retries.
        let table: [(RetryOn, [bool; 11]); 6] = [
            (
                on(|o| o.connect_failure = true),
                [
                    true, false, false, false, false, false, false, false, false, false, false,
                ],
            ),
            (
                on(|o| o.reset = true),
                [
                    true, true, true, false, false, false, false, false, false, false, false,
                ],
            ),
            (
                on(|o| o.gateway_error = true),
                [
                    true, true, true, false, true, true, true, false, false, false, false,
                ],
            ),
            (
                on(|o| o.status_5xx = true),
                [
                    true, true, true, true, true, true, true, false, false, false, false,
                ],
            ),
            (
                on(|o| o.retriable_status_codes = true),
                [
                    false, false, false, false, false, false, false, true, false, false, false,
                ],
            ),
            (RetryOn::default(), [false; 11]),
        ];
        for (retry_on, want) in table {
            let p = policy(retry_on, 1);
            let got: Vec<bool> = failures.iter().map(|&f| would_retry(&p, f)).collect();
            assert_eq!(got, want, "{retry_on:?}");
        }
    }

    #[test]
    fn back_off_is_jittered_and_doubles_up_to_the_maximum() {
        let mut b = BackOff::new(Duration::from_millis(25), Duration::from_millis(250));
        let bounds = [25, 50, 100, 200, 250, 250];
        for bound in bounds {
            let d = b.next();
            assert!(d < Duration::from_millis(bound), "{d:?} >= {bound} ms");
        }
        // Intervals below a millisecond count as one.
        let mut b = BackOff::new(Duration::from_micros(10), Duration::from_micros(10));
        assert_eq!(b.next(), Duration::ZERO);
    }

    fn cluster(max_retries: u32) -> Arc<Cluster> {
        let cfg = model::Cluster {
            connect_timeout: Duration::from_secs(1),
            circuit_breakers: model::CircuitBreakers {
                max_retries,
                ..Default::default()
            },
            ..model::Cluster::new("c", Discovery::Static(LoadAssignment::default()))
        };
        Cluster::new(
            cfg,
            Arc::new(ClusterStats::default()),
            Some(&[]),
            None,
            &CancellationToken::new(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn budget_breaker_and_stats() {
        let c = cluster(1);
        let on = RetryOn {
            status_5xx: true,
            ..RetryOn::default()
        };
        // Two retries allowed; the second succeeds.
        let mut r = RetryState::new(Arc::new(policy(on, 2)));
        assert!(matches!(r.decide(&c, true), Decision::Retry(d) if d < Duration::from_millis(25)));
        // While that retry is under way the breaker (max_retries 1) is full.
        let mut other = RetryState::new(Arc::new(policy(on, 2)));
        assert_eq!(other.decide(&c, true), Decision::Overflow);
        assert_eq!(c.stats().upstream_rq_retry_overflow.get(), 1);
        assert!(matches!(r.decide(&c, true), Decision::Retry(d) if d < Duration::from_millis(50)));
        assert_eq!(r.decide(&c, false), Decision::No);
        assert_eq!(c.stats().upstream_rq_retry.get(), 2);
        assert_eq!(c.stats().upstream_rq_retry_success.get(), 1);
        // The place is free again; a request whose retries run out.
        let mut r = RetryState::new(Arc::new(policy(on, 1)));
        assert!(matches!(r.decide(&c, true), Decision::Retry(_)));
        assert_eq!(r.decide(&c, true), Decision::LimitExceeded);
        assert_eq!(c.stats().upstream_rq_retry_limit_exceeded.get(), 1);
        assert_eq!(c.stats().upstream_rq_retry_success.get(), 1);
        // An answer that is not retried, on the first attempt: no success counted.
        let mut r = RetryState::new(Arc::new(policy(on, 1)));
        assert_eq!(r.decide(&c, false), Decision::No);
        assert_eq!(c.stats().upstream_rq_retry_success.get(), 1);
    }
}
