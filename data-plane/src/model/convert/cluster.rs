//! `envoy.config.cluster.v3.Cluster` -> [`Cluster`], with its health check.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers::Thresholds,
    cluster::{self as pb_cluster, ClusterDiscoveryType, CommonLbConfig, DiscoveryType, LbConfig},
    CircuitBreakers as PbCircuitBreakers, Cluster as PbCluster,
    OutlierDetection as PbOutlierDetection,
};
use envoy_types::pb::envoy::config::core::v3::{
    health_check::{self as pb_hc, HealthChecker},
    HealthCheck as PbHealthCheck, RequestMethod, RoutingPriority,
};
use envoy_types::pb::envoy::r#type::v3::{CodecClientType, Int64Range, Percent};
use envoy_types::pb::google::protobuf::UInt32Value;

use super::dns::{dns_discovery, DnsFields};
use super::endpoint::endpoints;
use super::tls::{health_check_tls, socket_matches, SocketMatch};
use super::{
    ads_source, duration, enum_name, optional_positive_duration, positive_duration, reject_set,
    required_name, unset, unset_or_empty, Check,
};
use crate::model::{
    CircuitBreakers, Cluster, Discovery, HealthCheck, HealthCheckKind, LbPolicy, LoadAssignment,
    NackError, OutlierDetection,
};

/// Envoy's default `connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Envoy's default `no_traffic_interval`.
pub const DEFAULT_NO_TRAFFIC_INTERVAL: Duration = Duration::from_secs(60);
/// Envoy's default `healthy_panic_threshold` (percent).
pub const DEFAULT_PANIC_THRESHOLD: f64 = 50.0;

impl TryFrom<&PbCluster> for Cluster {
    type Error = NackError;

    fn try_from(c: &PbCluster) -> Result<Self, NackError> {
        cluster(c).map_err(|message| NackError {
            kind: Some(pylon::ResourceType::Cluster),
            name: c.name.clone(),
            message,
        })
    }
}

fn cluster(c: &PbCluster) -> Check<Cluster> {
    let PbCluster {
        transport_socket_matches,
        transport_socket_matcher,
        name,
        // Observability only.
        alt_stat_name: _,
        stats_matcher: _,
        eds_cluster_config,
        connect_timeout,
        per_connection_buffer_limit_bytes,
        per_connection_buffer_high_watermark_timeout,
        lb_policy,
        load_assignment,
        health_checks,
        max_requests_per_connection,
        circuit_breakers,
        upstream_http_protocol_options,
        common_http_protocol_options,
        http_protocol_options,
        http2_protocol_options,
        // Upstream protocol options (e.g. HTTP/2 for an xDS or gRPC cluster):
        // accepted and ignored; the upstream protocol is the runtime's choice.
        typed_extension_protocol_options: _,
        // DNS settings: read for STRICT_DNS/LOGICAL_DNS clusters (`dns`);
        // Envoy ignores them for STATIC and EDS clusters, and so does pylon-proxy.
        dns_refresh_rate,
        dns_jitter,
        dns_failure_refresh_rate,
        respect_dns_ttl,
        dns_lookup_family,
        dns_resolvers,
        use_tcp_for_dns_lookups,
        dns_resolution_config,
        typed_dns_resolver_config,
        wait_for_warm_on_init,
        outlier_detection,
        cleanup_interval,
        upstream_bind_config,
        lb_subset_config,
        common_lb_config,
        transport_socket,
        // Read by filters pylon-proxy does not have.
        metadata: _,
        protocol_selection,
        upstream_connection_options,
        close_connections_on_host_health_failure,
        ignore_health_on_host_removal,
        filters,
        load_balancing_policy,
        lrs_server,
        lrs_report_endpoint_metrics,
        // Observability only.
        track_timeout_budgets: _,
        track_cluster_stats: _,
        upstream_config,
        preconnect_policy,
        connection_pool_per_downstream_connection,
        queuing_policies,
        cluster_discovery_type,
        lb_config,
    } = c;
    required_name(name)?;
    // TLS first: it is the unsupported field users are most likely to set
    // (only a health check may use it, see `tls`).
    let socket_matches = socket_matches(transport_socket, transport_socket_matches)?;
    reject_set!("";
        transport_socket_matcher,
        per_connection_buffer_limit_bytes,
        per_connection_buffer_high_watermark_timeout,
        max_requests_per_connection,
        cleanup_interval,
        upstream_bind_config,
        lb_subset_config,
        protocol_selection,
        upstream_connection_options,
        close_connections_on_host_health_failure,
        filters,
        load_balancing_policy,
        lrs_server,
        lrs_report_endpoint_metrics,
        upstream_config,
        preconnect_policy,
        connection_pool_per_downstream_connection,
        queuing_policies,
    );
    unset_or_empty(
        "",
        "upstream_http_protocol_options",
        upstream_http_protocol_options,
    )?;
    unset_or_empty(
        "",
        "common_http_protocol_options",
        common_http_protocol_options,
    )?;
    unset_or_empty("", "http_protocol_options", http_protocol_options)?;
    unset_or_empty("", "http2_protocol_options", http2_protocol_options)?;
    if wait_for_warm_on_init.as_ref().is_some_and(|b| !b.value) {
        return Err("wait_for_warm_on_init false is not supported".to_string());
    }

    let kind = match cluster_discovery_type {
        // The proto default of `type` is STATIC.
        None => DiscoveryType::Static,
        Some(ClusterDiscoveryType::Type(t)) => {
            DiscoveryType::try_from(*t).map_err(|_| format!("type {t} is not supported"))?
        }
        Some(ClusterDiscoveryType::ClusterType(ct)) => {
            return Err(format!("cluster_type {} is not supported", ct.name))
        }
    };
    let discovery = match kind {
        DiscoveryType::Static => {
            unset("", "eds_cluster_config", eds_cluster_config)?;
            let endpoints = match load_assignment {
                Some(la) => endpoints("load_assignment.", la)?,
                None => Vec::new(),
            };
            Discovery::Static(LoadAssignment {
                name: name.clone(),
                endpoints,
            })
        }
        DiscoveryType::Eds => {
            unset("", "load_assignment", load_assignment)?;
            let Some(pb_cluster::EdsClusterConfig {
                eds_config,
                service_name,
            }) = eds_cluster_config
            else {
                return Err("eds_cluster_config is required for an EDS cluster".to_string());
            };
            ads_source("eds_cluster_config.", "eds_config", eds_config)?;
            Discovery::Eds {
                service_name: if service_name.is_empty() {
                    name.clone()
                } else {
                    service_name.clone()
                },
            }
        }
        DiscoveryType::StrictDns | DiscoveryType::LogicalDns => {
            unset("", "eds_cluster_config", eds_cluster_config)?;
            Discovery::Dns(Box::new(dns_discovery(
                kind == DiscoveryType::LogicalDns,
                load_assignment,
                DnsFields {
                    refresh_rate: dns_refresh_rate,
                    jitter: dns_jitter,
                    failure_refresh_rate: dns_failure_refresh_rate,
                    respect_ttl: *respect_dns_ttl,
                    lookup_family: *dns_lookup_family,
                    resolvers: dns_resolvers,
                    use_tcp: *use_tcp_for_dns_lookups,
                    resolution_config: dns_resolution_config,
                    typed_resolver: typed_dns_resolver_config,
                },
            )?))
        }
        other => return Err(format!("type {} is not supported", other.as_str_name())),
    };

    let lb_policy = match pb_cluster::LbPolicy::try_from(*lb_policy) {
        Ok(pb_cluster::LbPolicy::RoundRobin) => LbPolicy::RoundRobin,
        Ok(other) => {
            return Err(format!(
                "lb_policy {} is not supported",
                other.as_str_name()
            ))
        }
        Err(_) => return Err(format!("lb_policy {lb_policy} is not supported")),
    };
    match lb_config {
        None => {}
        Some(LbConfig::RoundRobinLbConfig(rr)) => {
            let pb_cluster::RoundRobinLbConfig { slow_start_config } = rr;
            reject_set!("round_robin_lb_config."; slow_start_config);
        }
        Some(LbConfig::RingHashLbConfig(_)) => {
            return Err("ring_hash_lb_config is not supported".to_string())
        }
        Some(LbConfig::MaglevLbConfig(_)) => {
            return Err("maglev_lb_config is not supported".to_string())
        }
        Some(LbConfig::OriginalDstLbConfig(_)) => {
            return Err("original_dst_lb_config is not supported".to_string())
        }
        Some(LbConfig::LeastRequestLbConfig(_)) => {
            return Err("least_request_lb_config is not supported".to_string())
        }
    }

    let connect_timeout = optional_positive_duration("", "connect_timeout", connect_timeout)?
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);

    let health_check = match health_checks.as_slice() {
        [] => None,
        [hc] => Some(health_check("health_checks[0].", hc, &socket_matches)?),
        _ => return Err("health_checks: only one health check is supported".to_string()),
    };

    let healthy_panic_threshold = match common_lb_config {
        None => DEFAULT_PANIC_THRESHOLD,
        Some(lb) => panic_threshold(lb)?,
    };

    let circuit_breakers = match circuit_breakers {
        None => CircuitBreakers::default(),
        Some(cb) => circuit_breakers_of(cb)?,
    };

    let outlier_detection = outlier_detection
        .as_ref()
        .map(|od| outlier_detection_of("outlier_detection.", od).map(Box::new))
        .transpose()?;

    Ok(Cluster {
        name: name.clone(),
        discovery,
        connect_timeout,
        lb_policy,
        health_check,
        healthy_panic_threshold,
        circuit_breakers,
        outlier_detection,
        ignore_health_on_host_removal: *ignore_health_on_host_removal,
    })
}

/// `outlier_detection`, with Envoy's defaults for what is unset.
fn outlier_detection_of(p: &str, od: &PbOutlierDetection) -> Check<OutlierDetection> {
    let PbOutlierDetection {
        consecutive_5xx,
        interval,
        base_ejection_time,
        max_ejection_percent,
        enforcing_consecutive_5xx,
        enforcing_success_rate,
        success_rate_minimum_hosts,
        success_rate_request_volume,
        success_rate_stdev_factor,
        consecutive_gateway_failure,
        enforcing_consecutive_gateway_failure,
        split_external_local_origin_errors,
        consecutive_local_origin_failure,
        enforcing_consecutive_local_origin_failure,
        enforcing_local_origin_success_rate,
        failure_percentage_threshold,
        enforcing_failure_percentage,
        enforcing_failure_percentage_local_origin,
        failure_percentage_minimum_hosts,
        failure_percentage_request_volume,
        max_ejection_time,
        max_ejection_time_jitter,
        successful_active_health_check_uneject_host,
        monitors,
        always_eject_one_host,
        detect_degraded_hosts,
    } = od;
    reject_set!(p; monitors);
    if detect_degraded_hosts.as_ref().is_some_and(|b| b.value) {
        return Err(format!("{p}detect_degraded_hosts is not supported"));
    }
    let d = OutlierDetection::default();
    let count = |v: &Option<UInt32Value>, default: u32| v.as_ref().map_or(default, |v| v.value);
    // Percentages (Envoy validates them as at most 100).
    let percent = |field: &str, v: &Option<UInt32Value>, default: u32| -> Check<u32> {
        match v {
            None => Ok(default),
            Some(UInt32Value { value }) if *value <= 100 => Ok(*value),
            Some(UInt32Value { value }) => {
                Err(format!("{p}{field} {value} is not a percentage (0 to 100)"))
            }
        }
    };
    let interval = optional_positive_duration(p, "interval", interval)?.unwrap_or(d.interval);
    let base_ejection_time =
        optional_positive_duration(p, "base_ejection_time", base_ejection_time)?
            .unwrap_or(d.base_ejection_time);
    // Unset: the larger of 300 s and the base ejection time.
    let max_ejection_time = optional_positive_duration(p, "max_ejection_time", max_ejection_time)?
        .unwrap_or(d.max_ejection_time.max(base_ejection_time));
    if max_ejection_time < base_ejection_time {
        return Err(format!(
            "{p}max_ejection_time cannot be smaller than base_ejection_time"
        ));
    }
    Ok(OutlierDetection {
        consecutive_5xx: count(consecutive_5xx, d.consecutive_5xx),
        consecutive_gateway_failure: count(
            consecutive_gateway_failure,
            d.consecutive_gateway_failure,
        ),
        consecutive_local_origin_failure: count(
            consecutive_local_origin_failure,
            d.consecutive_local_origin_failure,
        ),
        split_external_local_origin_errors: *split_external_local_origin_errors,
        interval,
        base_ejection_time,
        max_ejection_time,
        max_ejection_time_jitter: duration(
            p,
            "max_ejection_time_jitter",
            max_ejection_time_jitter,
        )?
        .unwrap_or(d.max_ejection_time_jitter),
        max_ejection_percent: percent(
            "max_ejection_percent",
            max_ejection_percent,
            d.max_ejection_percent,
        )?,
        always_eject_one_host: always_eject_one_host
            .as_ref()
            .map_or(d.always_eject_one_host, |b| b.value),
        enforcing_consecutive_5xx: percent(
            "enforcing_consecutive_5xx",
            enforcing_consecutive_5xx,
            d.enforcing_consecutive_5xx,
        )?,
        enforcing_consecutive_gateway_failure: percent(
            "enforcing_consecutive_gateway_failure",
            enforcing_consecutive_gateway_failure,
            d.enforcing_consecutive_gateway_failure,
        )?,
        enforcing_consecutive_local_origin_failure: percent(
            "enforcing_consecutive_local_origin_failure",
            enforcing_consecutive_local_origin_failure,
            d.enforcing_consecutive_local_origin_failure,
        )?,
        enforcing_success_rate: percent(
            "enforcing_success_rate",
            enforcing_success_rate,
            d.enforcing_success_rate,
        )?,
        enforcing_local_origin_success_rate: percent(
            "enforcing_local_origin_success_rate",
            enforcing_local_origin_success_rate,
            d.enforcing_local_origin_success_rate,
        )?,
        success_rate_minimum_hosts: count(success_rate_minimum_hosts, d.success_rate_minimum_hosts),
        success_rate_request_volume: count(
            success_rate_request_volume,
            d.success_rate_request_volume,
        ),
        success_rate_stdev_factor: count(success_rate_stdev_factor, d.success_rate_stdev_factor),
        failure_percentage_threshold: percent(
            "failure_percentage_threshold",
            failure_percentage_threshold,
            d.failure_percentage_threshold,
        )?,
        enforcing_failure_percentage: percent(
            "enforcing_failure_percentage",
            enforcing_failure_percentage,
            d.enforcing_failure_percentage,
        )?,
        enforcing_failure_percentage_local_origin: percent(
            "enforcing_failure_percentage_local_origin",
            enforcing_failure_percentage_local_origin,
            d.enforcing_failure_percentage_local_origin,
        )?,
        failure_percentage_minimum_hosts: count(
            failure_percentage_minimum_hosts,
            d.failure_percentage_minimum_hosts,
        ),
        failure_percentage_request_volume: count(
            failure_percentage_request_volume,
            d.failure_percentage_request_volume,
        ),
        successful_active_health_check_uneject_host: successful_active_health_check_uneject_host
            .as_ref()
            .map_or(d.successful_active_health_check_uneject_host, |b| b.value),
    })
}

/// The thresholds of the DEFAULT priority: the first entry for it, as in
/// Envoy; unset values keep Envoy's defaults. Entries for HIGH are checked
/// and otherwise ignored: only routes with `priority: HIGH` would use them,
/// and route priorities are rejected.
fn circuit_breakers_of(cb: &PbCircuitBreakers) -> Check<CircuitBreakers> {
    let PbCircuitBreakers {
        thresholds,
        per_host_thresholds,
    } = cb;
    reject_set!("circuit_breakers."; per_host_thresholds);
    let mut out = None;
    for (i, t) in thresholds.iter().enumerate() {
        let Thresholds {
            priority,
            max_connections,
            max_pending_requests,
            max_requests,
            max_retries,
            retry_budget,
            // Adds `remaining_*` gauges: observability only.
            track_remaining: _,
            max_connection_pools,
        } = t;
        let p = format!("circuit_breakers.thresholds[{i}].");
        reject_set!(&p; retry_budget, max_connection_pools);
        let is_default = match RoutingPriority::try_from(*priority) {
            Ok(RoutingPriority::Default) => true,
            Ok(RoutingPriority::High) => false,
            Err(_) => return Err(format!("{p}priority {priority} is not supported")),
        };
        if !is_default || out.is_some() {
            continue;
        }
        let d = CircuitBreakers::default();
        let value = |v: &Option<envoy_types::pb::google::protobuf::UInt32Value>, default| {
            v.as_ref().map_or(default, |v| v.value)
        };
        out = Some(CircuitBreakers {
            max_connections: value(max_connections, d.max_connections),
            max_pending_requests: value(max_pending_requests, d.max_pending_requests),
            max_requests: value(max_requests, d.max_requests),
            max_retries: value(max_retries, d.max_retries),
        });
    }
    Ok(out.unwrap_or_default())
}

fn panic_threshold(lb: &CommonLbConfig) -> Check<f64> {
    let CommonLbConfig {
        healthy_panic_threshold,
        // Batches host-set updates over a window; applying each update at
        // once is a valid (shorter) window.
        update_merge_window: _,
        ignore_new_hosts_until_first_hc,
        close_connections_on_host_set_change,
        consistent_hashing_lb_config,
        override_host_status,
        locality_config_specifier,
    } = lb;
    reject_set!("common_lb_config.";
        ignore_new_hosts_until_first_hc,
        close_connections_on_host_set_change,
        consistent_hashing_lb_config,
        override_host_status,
        locality_config_specifier,
    );
    match healthy_panic_threshold {
        None => Ok(DEFAULT_PANIC_THRESHOLD),
        Some(Percent { value }) if (0.0..=100.0).contains(value) => Ok(*value),
        Some(Percent { value }) => Err(format!(
            "common_lb_config.healthy_panic_threshold {value} is not a percentage (0 to 100)"
        )),
    }
}

fn health_check(p: &str, hc: &PbHealthCheck, sockets: &[SocketMatch]) -> Check<HealthCheck> {
    let PbHealthCheck {
        timeout,
        interval,
        initial_jitter,
        interval_jitter,
        interval_jitter_percent,
        unhealthy_threshold,
        healthy_threshold,
        alt_port,
        // Whether a check reuses its connection does not change its outcome.
        reuse_connection: _,
        no_traffic_interval,
        no_traffic_healthy_interval,
        unhealthy_interval,
        unhealthy_edge_interval,
        healthy_edge_interval,
        // Health check event logging: observability only.
        event_log_path: _,
        event_logger: _,
        event_service: _,
        always_log_health_check_failures: _,
        always_log_health_check_success: _,
        tls_options,
        transport_socket_match_criteria,
        health_checker,
    } = hc;
    reject_set!(p;
        initial_jitter,
        interval_jitter,
        interval_jitter_percent,
        alt_port,
        no_traffic_healthy_interval,
        tls_options,
    );
    let tls = health_check_tls(transport_socket_match_criteria, sockets);
    let timeout = positive_duration(p, "timeout", timeout)?;
    let interval = positive_duration(p, "interval", interval)?;
    let threshold =
        |field: &str, v: &Option<envoy_types::pb::google::protobuf::UInt32Value>| match v {
            None => Err(format!("{p}{field} is required")),
            Some(v) if v.value == 0 => Err(format!("{p}{field} must be at least 1")),
            Some(v) => Ok(v.value),
        };
    let unhealthy_threshold = threshold("unhealthy_threshold", unhealthy_threshold)?;
    let healthy_threshold = threshold("healthy_threshold", healthy_threshold)?;
    let no_traffic_interval =
        optional_positive_duration(p, "no_traffic_interval", no_traffic_interval)?
            .unwrap_or(DEFAULT_NO_TRAFFIC_INTERVAL);
    let unhealthy_interval =
        optional_positive_duration(p, "unhealthy_interval", unhealthy_interval)?
            .unwrap_or(interval);
    // The edge intervals are accepted only at their defaults, which the model
    // implies: `unhealthy_interval` and `interval`.
    if optional_positive_duration(p, "unhealthy_edge_interval", unhealthy_edge_interval)?
        .is_some_and(|d| d != unhealthy_interval)
    {
        return Err(format!(
            "{p}unhealthy_edge_interval is not supported (other than equal to unhealthy_interval)"
        ));
    }
    if optional_positive_duration(p, "healthy_edge_interval", healthy_edge_interval)?
        .is_some_and(|d| d != interval)
    {
        return Err(format!(
            "{p}healthy_edge_interval is not supported (other than equal to interval)"
        ));
    }
    let kind = match health_checker {
        None => {
            return Err(format!(
                "{p}a health checker (tcp_health_check or http_health_check) is required"
            ))
        }
        Some(HealthChecker::TcpHealthCheck(tcp)) => {
            let pb_hc::TcpHealthCheck {
                send,
                receive,
                proxy_protocol_config,
            } = tcp;
            let p = format!("{p}tcp_health_check.");
            reject_set!(&p; send, receive, proxy_protocol_config);
            HealthCheckKind::Tcp
        }
        Some(HealthChecker::HttpHealthCheck(http)) => {
            http_check(&format!("{p}http_health_check."), http)?
        }
        Some(HealthChecker::GrpcHealthCheck(_)) => {
            return Err(format!("{p}grpc_health_check is not supported"))
        }
        Some(HealthChecker::CustomHealthCheck(_)) => {
            return Err(format!("{p}custom_health_check is not supported"))
        }
    };
    Ok(HealthCheck {
        interval,
        timeout,
        unhealthy_threshold,
        healthy_threshold,
        no_traffic_interval,
        unhealthy_interval,
        kind,
        tls,
    })
}

fn http_check(p: &str, http: &pb_hc::HttpHealthCheck) -> Check<HealthCheckKind> {
    let pb_hc::HttpHealthCheck {
        host,
        path,
        send,
        receive,
        response_buffer_size,
        request_headers_to_add,
        request_headers_to_remove,
        expected_statuses,
        retriable_statuses,
        codec_client_type,
        service_name_matcher,
        method,
    } = http;
    reject_set!(p;
        send,
        receive,
        response_buffer_size,
        request_headers_to_add,
        request_headers_to_remove,
        retriable_statuses,
        service_name_matcher,
    );
    if *codec_client_type != CodecClientType::Http1 as i32 {
        return Err(format!(
            "{p}codec_client_type {} is not supported",
            enum_name(*codec_client_type, |v| CodecClientType::try_from(v)
                .ok()
                .map(|c| c.as_str_name()))
        ));
    }
    if *method != RequestMethod::MethodUnspecified as i32 && *method != RequestMethod::Get as i32 {
        return Err(format!(
            "{p}method {} is not supported",
            enum_name(*method, |v| RequestMethod::try_from(v)
                .ok()
                .map(|m| m.as_str_name()))
        ));
    }
    if path.is_empty() {
        return Err(format!("{p}path is required"));
    }
    let expected_statuses = if expected_statuses.is_empty() {
        vec![(200, 201)]
    } else {
        expected_statuses
            .iter()
            .map(|&Int64Range { start, end }| {
                // Envoy allows statuses in [100, 600).
                match (u16::try_from(start), u16::try_from(end)) {
                    (Ok(s), Ok(e)) if (100..600).contains(&s) && e > s && e <= 600 => Ok((s, e)),
                    _ => Err(format!(
                        "{p}expected_statuses [{start}, {end}) is not a range within [100, 600)"
                    )),
                }
            })
            .collect::<Check<Vec<_>>>()?
    };
    Ok(HealthCheckKind::Http {
        path: path.clone(),
        host: (!host.is_empty()).then(|| host.clone()),
        expected_statuses,
    })
}
