//! `envoy.config.route.v3.RetryPolicy` -> [`RetryPolicy`] (a route's or a
//! virtual host's `retry_policy`).
//!
//! `retry_on` is Envoy's comma-separated list. The conditions that can happen
//! with pylon-proxy's HTTP/1.1 upstreams are honoured (`5xx`,
//! `gateway-error`, `reset`, `connect-failure`, `retriable-status-codes`);
//! `refused-stream` is accepted and never fires (an HTTP/2 stream refusal,
//! which an HTTP/1.1 upstream cannot send); every other known value is
//! rejected by name, and an unknown one as unknown.

use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3::{
    retry_policy::{retry_host_predicate, RetryBackOff, RetryHostPredicate},
    RetryPolicy as PbRetryPolicy,
};
use pylon::type_url;

use super::{duration, optional_positive_duration, reject_set, Check};
use crate::model::{RetryOn, RetryPolicy};

/// Envoy's default back-off base interval.
pub const DEFAULT_BASE_INTERVAL: Duration = Duration::from_millis(25);

/// `retry_on` values Envoy knows that pylon-proxy does not implement.
const UNSUPPORTED_RETRY_ON: &[&str] = &[
    "retriable-4xx",
    "reset-before-request",
    "envoy-ratelimited",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

pub(super) fn retry_policy(p: &str, r: &PbRetryPolicy) -> Check<RetryPolicy> {
    let PbRetryPolicy {
        retry_on,
        num_retries,
        per_try_timeout,
        per_try_idle_timeout,
        retry_priority,
        retry_host_predicate,
        retry_options_predicates,
        host_selection_retry_max_attempts,
        retriable_status_codes,
        retry_back_off,
        rate_limited_retry_back_off,
        retriable_headers,
        retriable_request_headers,
        refresh_cluster_on_retry,
    } = r;
    reject_set!(p;
        per_try_idle_timeout,
        retry_priority,
        retry_options_predicates,
        rate_limited_retry_back_off,
        retriable_headers,
        retriable_request_headers,
        refresh_cluster_on_retry,
    );
    let retry_on = parse_retry_on(p, retry_on)?;
    let retriable_status_codes = retriable_status_codes
        .iter()
        .map(|&c| match u16::try_from(c) {
            Ok(c) if (100..600).contains(&c) => Ok(c),
            _ => Err(format!(
                "{p}retriable_status_codes {c} is not an HTTP status (100 to 599)"
            )),
        })
        .collect::<Check<Vec<u16>>>()?;
    let (base_interval, max_interval) = back_off(p, retry_back_off)?;
    let mut previous_hosts = false;
    for (i, pred) in retry_host_predicate.iter().enumerate() {
        host_predicate(&format!("{p}retry_host_predicate[{i}]."), pred)?;
        previous_hosts = true;
    }
    let host_selection_retry_max_attempts = match *host_selection_retry_max_attempts {
        // Unset: one more pick.
        0 => 1,
        n => u32::try_from(n).map_err(|_| {
            format!("{p}host_selection_retry_max_attempts {n} must be a positive count")
        })?,
    };
    Ok(RetryPolicy {
        retry_on,
        num_retries: num_retries.as_ref().map_or(1, |n| n.value),
        // 0 is no per-try timeout, as for the route timeout.
        per_try_timeout: duration(p, "per_try_timeout", per_try_timeout)?.filter(|d| !d.is_zero()),
        retriable_status_codes,
        base_interval,
        max_interval,
        previous_hosts,
        host_selection_retry_max_attempts,
    })
}

fn parse_retry_on(p: &str, retry_on: &str) -> Check<RetryOn> {
    let mut on = RetryOn::default();
    for token in retry_on.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        match token {
            "5xx" => on.status_5xx = true,
            "gateway-error" => on.gateway_error = true,
            "reset" => on.reset = true,
            "connect-failure" => on.connect_failure = true,
            "retriable-status-codes" => on.retriable_status_codes = true,
            // An HTTP/2 stream refusal: HTTP/1.1 upstreams never send one.
            "refused-stream" => {}
            t if UNSUPPORTED_RETRY_ON.contains(&t) => {
                return Err(format!("{p}retry_on {t} is not supported"))
            }
            t => return Err(format!("{p}retry_on {t:?} is not a retry condition")),
        }
    }
    Ok(on)
}

/// `retry_back_off`: Envoy's 25 ms base and 10 x base maximum when unset.
fn back_off(p: &str, b: &Option<RetryBackOff>) -> Check<(Duration, Duration)> {
    let Some(RetryBackOff {
        base_interval,
        max_interval,
    }) = b
    else {
        return Ok((DEFAULT_BASE_INTERVAL, DEFAULT_BASE_INTERVAL * 10));
    };
    let p = format!("{p}retry_back_off.");
    let base = match optional_positive_duration(&p, "base_interval", base_interval)? {
        None => return Err(format!("{p}base_interval is required")),
        // Envoy rounds intervals below 1 ms up to 1 ms.
        Some(d) => d.max(Duration::from_millis(1)),
    };
    let max = match optional_positive_duration(&p, "max_interval", max_interval)? {
        None => base * 10,
        Some(d) if d < base => {
            return Err(format!("{p}max_interval must be at least base_interval"))
        }
        Some(d) => d,
    };
    Ok((base, max))
}

/// Only `envoy.retry_host_predicates.previous_hosts` is implemented.
fn host_predicate(p: &str, pred: &RetryHostPredicate) -> Check<()> {
    let RetryHostPredicate { name, config_type } = pred;
    match config_type {
        Some(retry_host_predicate::ConfigType::TypedConfig(any))
            if any.type_url == type_url::PREVIOUS_HOSTS =>
        {
            // PreviousHostsPredicate has no fields: anything encoded in it is
            // a field this release does not know.
            if !any.value.is_empty() {
                return Err(format!(
                    "{p}typed_config: unknown fields in PreviousHostsPredicate"
                ));
            }
            Ok(())
        }
        Some(retry_host_predicate::ConfigType::TypedConfig(any)) => Err(format!(
            "{p}retry host predicate {} is not supported (only {})",
            any.type_url,
            type_url::PREVIOUS_HOSTS_PREDICATE
        )),
        None => Err(format!(
            "{p}typed_config is required (retry host predicate {name})"
        )),
    }
}
