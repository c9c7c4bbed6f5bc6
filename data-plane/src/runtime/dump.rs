//! `/config_dump`: the model resources in force as JSON shaped like Envoy's
//! admin `ConfigDump` (v3 field names, durations as `"5s"`).
//!
//! Owns only the model -> JSON mapping; the admin server decides how to serve it.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::model::{
    Cluster, Discovery, DnsDiscovery, HealthCheck, HealthCheckKind, ListenerKind, LoadAssignment,
    LookupFamily, OutlierDetection, PathMatch, RetryPolicy, RouteConfig, RouteSource,
};
use crate::upstream::ClusterManager;

const T_CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const T_CLA: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const T_LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const T_ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const T_TCP: &str = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const T_HCM: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const T_ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";

/// The whole dump.
pub fn config_dump(
    clusters: &ClusterManager,
    listeners: &[crate::model::Listener],
    routes: &[RouteConfig],
) -> Value {
    let mut static_clusters = Vec::new();
    let mut dynamic_clusters = Vec::new();
    for c in clusters.clusters() {
        let entry = json!({ "cluster": cluster(c.config()) });
        if clusters.is_static(c.name()) {
            static_clusters.push(entry);
        } else {
            dynamic_clusters.push(entry);
        }
    }
    let endpoints: Vec<Value> = clusters
        .load_assignments()
        .iter()
        .map(|la| json!({ "endpoint_config": load_assignment(la) }))
        .collect();
    let listeners: Vec<Value> = listeners
        .iter()
        .map(|l| json!({ "name": l.name, "active_state": { "listener": listener(l) } }))
        .collect();
    let routes: Vec<Value> = routes
        .iter()
        .map(|r| json!({ "route_config": route_config(r, true) }))
        .collect();
    json!({
        "configs": [
            {
                "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
                "static_clusters": static_clusters,
                "dynamic_active_clusters": dynamic_clusters,
            },
            {
                "@type": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
                "dynamic_endpoint_configs": endpoints,
            },
            {
                "@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
                "dynamic_listeners": listeners,
            },
            {
                "@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
                "dynamic_route_configs": routes,
            },
        ]
    })
}

/// Protobuf JSON duration: `5s`, `0.250s`.
pub fn duration(d: Duration) -> String {
    let (s, n) = (d.as_secs(), d.subsec_nanos());
    if n == 0 {
        format!("{s}s")
    } else if n % 1_000_000 == 0 {
        format!("{s}.{:03}s", n / 1_000_000)
    } else if n % 1_000 == 0 {
        format!("{s}.{:06}s", n / 1_000)
    } else {
        format!("{s}.{n:09}s")
    }
}

fn address(a: SocketAddr) -> Value {
    json!({ "socket_address": { "address": a.ip().to_string(), "port_value": a.port() } })
}

fn cluster(c: &Cluster) -> Value {
    let mut m = Map::new();
    m.insert("@type".into(), T_CLUSTER.into());
    m.insert("name".into(), c.name.clone().into());
    match &c.discovery {
        Discovery::Eds { service_name } => {
            m.insert("type".into(), "EDS".into());
            m.insert(
                "eds_cluster_config".into(),
                json!({ "eds_config": { "ads": {} }, "service_name": service_name }),
            );
        }
        Discovery::Static(la) => {
            m.insert("type".into(), "STATIC".into());
            m.insert("load_assignment".into(), load_assignment(la));
        }
        Discovery::Dns(d) => {
            dns(&mut m, &c.name, d);
        }
    }
    m.insert("connect_timeout".into(), duration(c.connect_timeout).into());
    m.insert("lb_policy".into(), "ROUND_ROBIN".into());
    if let Some(hc) = &c.health_check {
        m.insert("health_checks".into(), json!([health_check(hc)]));
    }
    m.insert(
        "common_lb_config".into(),
        json!({ "healthy_panic_threshold": { "value": c.healthy_panic_threshold } }),
    );
    let cb = &c.circuit_breakers;
    m.insert(
        "circuit_breakers".into(),
        json!({ "thresholds": [{
            "priority": "DEFAULT",
            "max_connections": cb.max_connections,
            "max_pending_requests": cb.max_pending_requests,
            "max_requests": cb.max_requests,
            "max_retries": cb.max_retries,
        }] }),
    );
    if let Some(od) = &c.outlier_detection {
        m.insert("outlier_detection".into(), outlier_detection(od));
    }
    m.insert(
        "ignore_health_on_host_removal".into(),
        c.ignore_health_on_host_removal.into(),
    );
    Value::Object(m)
}

/// A DNS cluster's names and settings, in their Envoy spelling.
fn dns(m: &mut Map<String, Value>, name: &str, d: &DnsDiscovery) {
    let kind = if d.logical {
        "LOGICAL_DNS"
    } else {
        "STRICT_DNS"
    };
    m.insert("type".into(), kind.into());
    let lb_endpoints: Vec<Value> = d
        .targets
        .iter()
        .map(|t| {
            json!({
                "endpoint": { "address": { "socket_address": { "address": t.host, "port_value": t.port } } },
                "load_balancing_weight": t.weight,
            })
        })
        .collect();
    m.insert(
        "load_assignment".into(),
        json!({ "cluster_name": name, "endpoints": [ { "lb_endpoints": lb_endpoints } ] }),
    );
    m.insert("dns_refresh_rate".into(), duration(d.refresh_rate).into());
    if let Some((base, max)) = d.failure_refresh {
        m.insert(
            "dns_failure_refresh_rate".into(),
            json!({ "base_interval": duration(base), "max_interval": duration(max) }),
        );
    }
    if let Some(j) = d.jitter {
        m.insert("dns_jitter".into(), duration(j).into());
    }
    m.insert("respect_dns_ttl".into(), d.respect_ttl.into());
    let family = match d.lookup_family {
        LookupFamily::Auto => "AUTO",
        LookupFamily::V4Only => "V4_ONLY",
        LookupFamily::V6Only => "V6_ONLY",
        LookupFamily::V4Preferred => "V4_PREFERRED",
        LookupFamily::All => "ALL",
    };
    m.insert("dns_lookup_family".into(), family.into());
    if !d.resolvers.is_empty() {
        let resolvers: Vec<Value> = d.resolvers.iter().map(|a| address(*a)).collect();
        m.insert(
            "dns_resolution_config".into(),
            json!({
                "resolvers": resolvers,
                "dns_resolver_options": {
                    "use_tcp_for_dns_lookups": d.use_tcp,
                    "no_default_search_domain": d.no_default_search_domain,
                },
            }),
        );
    }
}

fn outlier_detection(od: &OutlierDetection) -> Value {
    json!({
        "consecutive_5xx": od.consecutive_5xx,
        "consecutive_gateway_failure": od.consecutive_gateway_failure,
        "consecutive_local_origin_failure": od.consecutive_local_origin_failure,
        "split_external_local_origin_errors": od.split_external_local_origin_errors,
        "interval": duration(od.interval),
        "base_ejection_time": duration(od.base_ejection_time),
        "max_ejection_time": duration(od.max_ejection_time),
        "max_ejection_time_jitter": duration(od.max_ejection_time_jitter),
        "max_ejection_percent": od.max_ejection_percent,
        "always_eject_one_host": od.always_eject_one_host,
        "enforcing_consecutive_5xx": od.enforcing_consecutive_5xx,
        "enforcing_consecutive_gateway_failure": od.enforcing_consecutive_gateway_failure,
        "enforcing_consecutive_local_origin_failure": od.enforcing_consecutive_local_origin_failure,
        "enforcing_success_rate": od.enforcing_success_rate,
        "enforcing_local_origin_success_rate": od.enforcing_local_origin_success_rate,
        "success_rate_minimum_hosts": od.success_rate_minimum_hosts,
        "success_rate_request_volume": od.success_rate_request_volume,
        "success_rate_stdev_factor": od.success_rate_stdev_factor,
        "failure_percentage_threshold": od.failure_percentage_threshold,
        "enforcing_failure_percentage": od.enforcing_failure_percentage,
        "enforcing_failure_percentage_local_origin": od.enforcing_failure_percentage_local_origin,
        "failure_percentage_minimum_hosts": od.failure_percentage_minimum_hosts,
        "failure_percentage_request_volume": od.failure_percentage_request_volume,
        "successful_active_health_check_uneject_host": od.successful_active_health_check_uneject_host,
    })
}

fn retry_policy(p: &RetryPolicy) -> Value {
    let on = &p.retry_on;
    let retry_on: Vec<&str> = [
        (on.status_5xx, "5xx"),
        (on.gateway_error, "gateway-error"),
        (on.reset, "reset"),
        (on.connect_failure, "connect-failure"),
        (on.retriable_status_codes, "retriable-status-codes"),
    ]
    .into_iter()
    .filter_map(|(set, name)| set.then_some(name))
    .collect();
    let mut v = json!({
        "retry_on": retry_on.join(","),
        "num_retries": p.num_retries,
        "retry_back_off": {
            "base_interval": duration(p.base_interval),
            "max_interval": duration(p.max_interval),
        },
        "host_selection_retry_max_attempts": p.host_selection_retry_max_attempts,
    });
    if let Some(t) = p.per_try_timeout {
        v["per_try_timeout"] = duration(t).into();
    }
    if !p.retriable_status_codes.is_empty() {
        v["retriable_status_codes"] = p.retriable_status_codes.clone().into();
    }
    if p.previous_hosts {
        v["retry_host_predicate"] = json!([{
            "name": pylon::type_url::PREVIOUS_HOSTS_PREDICATE,
            "typed_config": { "@type": pylon::type_url::PREVIOUS_HOSTS },
        }]);
    }
    v
}

fn health_check(hc: &HealthCheck) -> Value {
    let mut v = json!({
        "timeout": duration(hc.timeout),
        "interval": duration(hc.interval),
        "unhealthy_threshold": hc.unhealthy_threshold,
        "healthy_threshold": hc.healthy_threshold,
        "no_traffic_interval": duration(hc.no_traffic_interval),
        "unhealthy_interval": duration(hc.unhealthy_interval),
    });
    let kind = match &hc.kind {
        HealthCheckKind::Tcp => ("tcp_health_check", json!({})),
        HealthCheckKind::Http {
            path,
            host,
            expected_statuses,
        } => {
            let mut h = json!({ "path": path });
            if let Some(host) = host {
                h["host"] = host.clone().into();
            }
            if !expected_statuses.is_empty() {
                h["expected_statuses"] = expected_statuses
                    .iter()
                    .map(|(s, e)| json!({ "start": s, "end": e }))
                    .collect();
            }
            ("http_health_check", h)
        }
    };
    v[kind.0] = kind.1;
    if let Some(tls) = &hc.tls {
        // Where pylon-proxy keeps it; Envoy's dump shows the cluster's
        // transport_socket_matches and the check's match criteria instead.
        let mut t = json!({});
        if let Some(sni) = &tls.sni {
            t["sni"] = sni.clone().into();
        }
        if let Some(ca) = &tls.trusted_ca {
            t["common_tls_context"] = json!({
                "validation_context": { "trusted_ca": { "filename": ca.filename } }
            });
        }
        v["tls"] = t;
    }
    v
}

fn load_assignment(la: &LoadAssignment) -> Value {
    let lb_endpoints: Vec<Value> = la
        .endpoints
        .iter()
        .map(|e| json!({ "endpoint": { "address": address(e.addr) }, "load_balancing_weight": e.weight }))
        .collect();
    json!({
        "@type": T_CLA,
        "cluster_name": la.name,
        "endpoints": [ { "lb_endpoints": lb_endpoints } ],
    })
}

fn listener(l: &crate::model::Listener) -> Value {
    let filter = match &l.kind {
        ListenerKind::Tcp(t) => {
            let mut c = json!({
                "@type": T_TCP,
                "stat_prefix": t.stat_prefix,
                "cluster": t.cluster,
                "max_connect_attempts": t.max_connect_attempts,
            });
            c["idle_timeout"] = duration(t.idle_timeout.unwrap_or(Duration::ZERO)).into();
            json!({ "name": "envoy.filters.network.tcp_proxy", "typed_config": c })
        }
        ListenerKind::Http(h) => {
            let lim = &h.limits;
            let off = |d: Option<Duration>| duration(d.unwrap_or(Duration::ZERO));
            let mut c = json!({
                "@type": T_HCM,
                "stat_prefix": h.stat_prefix,
                "http_filters": [ { "name": "envoy.filters.http.router", "typed_config": { "@type": T_ROUTER } } ],
                "stream_idle_timeout": off(lim.stream_idle_timeout),
                "max_request_headers_kb": lim.max_request_headers_kb,
                "common_http_protocol_options": {
                    "idle_timeout": off(lim.idle_timeout),
                    "max_headers_count": lim.max_headers_count,
                },
                "normalize_path": h.normalize_path,
                "merge_slashes": h.merge_slashes,
            });
            if let Some(t) = lim.request_headers_timeout {
                c["request_headers_timeout"] = duration(t).into();
            }
            match &h.routes {
                RouteSource::Rds(name) => {
                    c["rds"] = json!({ "route_config_name": name, "config_source": { "ads": {} } });
                }
                RouteSource::Inline(rc) => c["route_config"] = route_config(rc, false),
            }
            json!({ "name": "envoy.filters.network.http_connection_manager", "typed_config": c })
        }
    };
    json!({
        "@type": T_LISTENER,
        "name": l.name,
        "address": address(l.addr),
        "filter_chains": [ { "filters": [ filter ] } ],
    })
}

fn route_config(rc: &RouteConfig, typed: bool) -> Value {
    let vhosts: Vec<Value> = rc
        .virtual_hosts
        .iter()
        .map(|vh| {
            let routes: Vec<Value> = vh
                .routes
                .iter()
                .map(|r| {
                    let m = match &r.path {
                        PathMatch::Prefix(p) => json!({ "prefix": p }),
                        PathMatch::Exact(p) => json!({ "path": p }),
                        PathMatch::SeparatedPrefix(p) => json!({ "path_separated_prefix": p }),
                    };
                    let mut a = json!({
                        "cluster": r.action.cluster,
                        "timeout": duration(r.action.timeout.unwrap_or(Duration::ZERO)),
                    });
                    if let Some(rw) = &r.action.prefix_rewrite {
                        a["prefix_rewrite"] = rw.clone().into();
                    }
                    if let Some(p) = &r.action.retry_policy {
                        a["retry_policy"] = retry_policy(p);
                    }
                    let mut route = json!({ "match": m, "route": a });
                    if let Some(limit) = r.action.per_request_buffer_limit_bytes {
                        route["per_request_buffer_limit_bytes"] = limit.into();
                    }
                    route
                })
                .collect();
            let mut v = json!({ "name": vh.name, "domains": vh.domains, "routes": routes });
            if let Some(p) = &vh.retry_policy {
                v["retry_policy"] = retry_policy(p);
            }
            if let Some(limit) = vh.per_request_buffer_limit_bytes {
                v["per_request_buffer_limit_bytes"] = limit.into();
            }
            v
        })
        .collect();
    let mut v = json!({ "name": rc.name, "virtual_hosts": vhosts });
    if typed {
        v["@type"] = T_ROUTE.into();
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration(Duration::from_secs(5)), "5s");
        assert_eq!(duration(Duration::from_millis(250)), "0.250s");
        assert_eq!(duration(Duration::from_micros(1_500_001)), "1.500001s");
        assert_eq!(duration(Duration::from_nanos(1)), "0.000000001s");
    }
}
