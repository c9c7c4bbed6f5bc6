//! Pure functions from the concise model to Envoy v3 protos. The building
//! blocks the Envoy-native normalisation shares (the ADS config source, EDS
//! over ADS, locality weights) live in `proto`, below both.
//!
//! This file owns what a concise setting means in Envoy terms. It assumes its
//! input passed `validate` (exactly one health check kind, one route match, one
//! listener kind); given input that did not, it still returns something rather
//! than panicking, and that result is never served.

use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers::Thresholds, cluster::LbPolicy, CircuitBreakers, Cluster, OutlierDetection,
};
use envoy_types::pb::envoy::config::core::v3::{
    health_check, HealthCheck, Locality, RoutingPriority,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{
    filter, ApiListener, Filter, FilterChain, Listener,
};
use envoy_types::pb::envoy::config::route::v3::{
    retry_policy::{retry_host_predicate, RetryHostPredicate},
    route, route_action, route_match, RetryPolicy, Route, RouteAction, RouteConfiguration,
    RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::r#type::v3::Int64Range;
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use pylon::type_url;

use super::address::Target;
use super::proto::{ads_config_source, drain_removed_hosts, make_eds, pack};
use super::schema::{self, RetryOn};
use crate::resources::{NamedAssignment, NamedEndpoint};

/// How long after an answer pylon-xds looks host names up again, when a
/// cluster does not say (Envoy's `dns_refresh_rate` default).
pub const DEFAULT_DNS_REFRESH: std::time::Duration = std::time::Duration::from_secs(5);

/// Connect attempts of a concise `tcp_proxy` that sets none (Envoy's
/// default is 1). An attempt that failed to connect sent nothing, so trying
/// the next host is always safe; three get past two dead hosts.
pub const DEFAULT_MAX_CONNECT_ATTEMPTS: u32 = 3;

/// `max_ejection_percent` of a concise `outlier_detection` that sets none.
/// Envoy's 10 % would eject no host of a cluster with fewer than ten
/// (ejecting one of three is 33 %); half lets one of two or three go, never
/// a majority.
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 50;

/// What concise `retries` retry when `on` is not given: no answer from the
/// host at all, or a gateway error (502, 503, 504).
pub const DEFAULT_RETRY_ON: [RetryOn; 3] = [
    RetryOn::ConnectFailure,
    RetryOn::Reset,
    RetryOn::GatewayError,
];

/// `num_retries` of concise `retries` that set none (Envoy's default is 1):
/// enough to get past two failing hosts of three.
pub const DEFAULT_NUM_RETRIES: u32 = 2;

/// Picks per retry for a host not tried yet (`host_selection_retry_max_attempts`
/// with the `previous_hosts` predicate).
pub const RETRY_HOST_SELECTION_ATTEMPTS: i64 = 3;

/// A concise cluster: an EDS cluster over ADS, and its endpoints in one
/// locality of weight 1.
pub fn cluster(c: &schema::Cluster) -> (Cluster, ClusterLoadAssignment) {
    let mut cluster = Cluster {
        name: c.name.clone(),
        connect_timeout: Some(c.connect_timeout.to_proto()),
        lb_policy: match c.lb_policy {
            schema::LbPolicy::RoundRobin => LbPolicy::RoundRobin,
            schema::LbPolicy::LeastRequest => LbPolicy::LeastRequest,
            schema::LbPolicy::Random => LbPolicy::Random,
        } as i32,
        health_checks: c.health_check.iter().map(health_check).collect(),
        transport_socket_matches: c
            .health_check
            .iter()
            .filter_map(|hc| hc.https.as_ref())
            .map(super::health_tls::socket_match)
            .collect(),
        circuit_breakers: c.circuit_breakers.and_then(circuit_breakers),
        outlier_detection: c.outlier_detection.map(outlier_detection),
        ..Default::default()
    };
    make_eds(&mut cluster);
    drain_removed_hosts(&mut cluster);
    let cla = ClusterLoadAssignment {
        cluster_name: c.name.clone(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: c.endpoints.iter().filter_map(lb_endpoint).collect(),
            load_balancing_weight: Some(UInt32Value { value: 1 }),
            locality: Some(Locality::default()),
            ..Default::default()
        }],
        ..Default::default()
    };
    (cluster, cla)
}

/// Concise circuit breakers: one `thresholds` entry for the DEFAULT priority
/// with the values given; `None` when none is given, so `circuit_breakers: {}`
/// serves the same cluster as no `circuit_breakers` at all.
pub fn circuit_breakers(cb: schema::CircuitBreakers) -> Option<CircuitBreakers> {
    if cb == schema::CircuitBreakers::default() {
        return None;
    }
    let value = |v: Option<u32>| v.map(|value| UInt32Value { value });
    Some(CircuitBreakers {
        thresholds: vec![Thresholds {
            priority: RoutingPriority::Default as i32,
            max_connections: value(cb.max_connections),
            max_pending_requests: value(cb.max_pending_requests),
            max_requests: value(cb.max_requests),
            max_retries: value(cb.max_retries),
            ..Default::default()
        }],
        ..Default::default()
    })
}

/// Concise outlier detection. Fields left out keep Envoy's defaults, except
/// `max_ejection_percent` ([`DEFAULT_MAX_EJECTION_PERCENT`]). A gateway-error
/// count asked for is enforced (Envoy detects these without ejecting unless
/// told to); a local-origin count asked for counts connect failures,
/// timeouts and resets apart from answers, which is what makes it apply.
pub fn outlier_detection(od: schema::OutlierDetection) -> OutlierDetection {
    let value = |v: Option<u32>| v.map(|value| UInt32Value { value });
    OutlierDetection {
        consecutive_5xx: value(od.consecutive_5xx),
        consecutive_gateway_failure: value(od.consecutive_gateway_failure),
        enforcing_consecutive_gateway_failure: value(od.consecutive_gateway_failure.map(|_| 100)),
        consecutive_local_origin_failure: value(od.consecutive_local_origin_failure),
        split_external_local_origin_errors: od.consecutive_local_origin_failure.is_some(),
        interval: od.interval.map(|d| d.to_proto()),
        base_ejection_time: od.base_ejection_time.map(|d| d.to_proto()),
        max_ejection_percent: value(Some(
            od.max_ejection_percent
                .unwrap_or(DEFAULT_MAX_EJECTION_PERCENT),
        )),
        ..Default::default()
    }
}

/// The EDS endpoint of an IP endpoint; `None` for a host name, whose
/// addresses `crate::dns` fills in (see [`named_assignment`]).
pub fn lb_endpoint(e: &schema::Endpoint) -> Option<LbEndpoint> {
    let Target::Ip(address) = &e.address else {
        return None;
    };
    Some(LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
            address: Some(address.to_proto()),
            ..Default::default()
        })),
        // Unset means 1 to Envoy and gRPC alike; leaving it out keeps the
        // concise and native spellings of the same endpoints identical.
        load_balancing_weight: (e.weight != 1).then_some(UInt32Value { value: e.weight }),
        ..Default::default()
    })
}

/// Everything a concise cluster becomes.
#[derive(Debug)]
pub struct ClusterParts {
    pub cluster: Cluster,
    pub endpoints: ClusterLoadAssignment,
    /// The endpoints as written, when some are host names (for `crate::dns`).
    pub names: Option<NamedAssignment>,
}

/// A concise cluster's [`ClusterParts`].
pub fn cluster_parts(c: &schema::Cluster) -> ClusterParts {
    let (cluster_, endpoints) = cluster(c);
    let refresh = c.dns_refresh.map_or(DEFAULT_DNS_REFRESH, |d| d.to_std());
    ClusterParts {
        cluster: cluster_,
        endpoints,
        names: named_assignment(&c.name, &c.endpoints, refresh),
    }
}

/// The endpoints of load assignment `assignment` as written, when some are
/// host names (`None` otherwise): what `crate::dns` resolves.
pub fn named_assignment(
    assignment: &str,
    endpoints: &[schema::Endpoint],
    refresh: std::time::Duration,
) -> Option<NamedAssignment> {
    if !endpoints
        .iter()
        .any(|e| matches!(e.address, Target::Name(_)))
    {
        return None;
    }
    let endpoints = endpoints
        .iter()
        .map(|e| match &e.address {
            Target::Name(n) => NamedEndpoint::Name {
                host: n.host.clone(),
                port: n.port,
                weight: e.weight,
            },
            Target::Ip(_) => NamedEndpoint::Fixed(Box::new(lb_endpoint(e).unwrap_or_default())),
        })
        .collect();
    Some(NamedAssignment {
        assignment: assignment.to_string(),
        endpoints,
        refresh,
    })
}

/// A concise health check. `no_traffic_interval` defaults to `interval`.
/// An `https` check is an HTTP check whose `transport_socket_match_criteria`
/// picks the cluster's TLS entry (`health_tls`).
pub fn health_check(hc: &schema::HealthCheck) -> HealthCheck {
    let http = |path: &str, host: &Option<String>, statuses: &[u32]| {
        health_check::HealthChecker::HttpHealthCheck(health_check::HttpHealthCheck {
            path: path.to_string(),
            host: host.clone().unwrap_or_default(),
            expected_statuses: statuses
                .iter()
                .map(|&status| Int64Range {
                    start: i64::from(status),
                    end: i64::from(status) + 1,
                })
                .collect(),
            ..Default::default()
        })
    };
    let checker = match (&hc.http, &hc.https) {
        (Some(h), _) => http(&h.path, &h.host, &h.expected_statuses),
        (None, Some(h)) => http(&h.path, &h.host, &h.expected_statuses),
        (None, None) => {
            health_check::HealthChecker::TcpHealthCheck(health_check::TcpHealthCheck::default())
        }
    };
    let transport_socket_match_criteria = hc
        .https
        .as_ref()
        .map(|_| super::health_tls::match_criteria());
    HealthCheck {
        timeout: Some(hc.timeout.to_proto()),
        interval: Some(hc.interval.to_proto()),
        unhealthy_threshold: Some(UInt32Value {
            value: hc.unhealthy_threshold,
        }),
        healthy_threshold: Some(UInt32Value {
            value: hc.healthy_threshold,
        }),
        no_traffic_interval: Some(hc.no_traffic_interval.unwrap_or(hc.interval).to_proto()),
        health_checker: Some(checker),
        transport_socket_match_criteria,
        ..Default::default()
    }
}

/// A concise listener, and for an HTTP listener the route configuration (named
/// as the listener) its connection manager fetches over ADS.
pub fn listener(l: &schema::Listener) -> (Listener, Option<RouteConfiguration>) {
    let (filters, routes) = match (&l.tcp_proxy, &l.http) {
        (Some(tcp), _) => (vec![tcp_proxy_filter(&l.name, tcp)], None),
        (None, Some(http)) => {
            let (filter, routes) = http_filter(&l.name, http);
            (vec![filter], Some(routes))
        }
        (None, None) => (Vec::new(), None),
    };
    let listener = Listener {
        name: l.name.clone(),
        address: Some(l.address.to_proto()),
        filter_chains: vec![FilterChain {
            filters,
            ..Default::default()
        }],
        ..Default::default()
    };
    (listener, routes)
}

fn tcp_proxy_filter(name: &str, tcp: &schema::TcpProxy) -> Filter {
    let config = TcpProxy {
        stat_prefix: name.to_string(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(tcp.cluster.clone())),
        idle_timeout: tcp.idle_timeout.map(|d| d.to_proto()),
        max_connect_attempts: Some(UInt32Value {
            value: tcp
                .max_connect_attempts
                .unwrap_or(DEFAULT_MAX_CONNECT_ATTEMPTS),
        }),
        ..Default::default()
    };
    Filter {
        name: type_url::TCP_PROXY_FILTER.to_string(),
        config_type: Some(filter::ConfigType::TypedConfig(pack(
            type_url::TCP_PROXY,
            &config,
        ))),
    }
}

fn http_filter(name: &str, http: &schema::Http) -> (Filter, RouteConfiguration) {
    let manager = HttpConnectionManager {
        stat_prefix: name.to_string(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads_config_source()),
            route_config_name: name.to_string(),
        })),
        http_filters: vec![router_filter()],
        ..Default::default()
    };
    let virtual_hosts = match (&http.routes, &http.virtual_hosts) {
        (Some(routes), _) => vec![VirtualHost {
            name: name.to_string(),
            domains: vec!["*".to_string()],
            routes: routes.iter().map(route).collect(),
            ..Default::default()
        }],
        (None, Some(hosts)) => hosts
            .iter()
            .map(|vh| VirtualHost {
                name: vh.name.clone(),
                domains: vh.domains.clone(),
                routes: vh.routes.iter().map(route).collect(),
                ..Default::default()
            })
            .collect(),
        (None, None) => Vec::new(),
    };
    let filter = Filter {
        name: type_url::HCM_FILTER.to_string(),
        config_type: Some(filter::ConfigType::TypedConfig(pack(
            type_url::HTTP_CONNECTION_MANAGER,
            &manager,
        ))),
    };
    let routes = RouteConfiguration {
        name: name.to_string(),
        virtual_hosts,
        ..Default::default()
    };
    (filter, routes)
}

/// A `grpc_services` entry: what a proxyless gRPC client dialing
/// `xds:///{name}:{port}` asks for. Listener, route configuration and cluster
/// are all named after that target authority:
///
/// - an `api_listener` Listener holding an HttpConnectionManager (router as its
///   last HTTP filter) that fetches its routes over RDS;
/// - a RouteConfiguration with one virtual host whose domains match the
///   authority, with and without the port, routing everything to the cluster;
/// - an EDS Cluster with ROUND_ROBIN;
/// - a ClusterLoadAssignment with the endpoints in one locality, whose weight
///   is set (gRPC ignores localities without one).
pub fn grpc_service(
    g: &schema::GrpcService,
) -> (Listener, RouteConfiguration, Cluster, ClusterLoadAssignment) {
    let authority = format!("{}:{}", g.name, g.port);
    let manager = HttpConnectionManager {
        stat_prefix: authority.clone(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads_config_source()),
            route_config_name: authority.clone(),
        })),
        http_filters: vec![router_filter()],
        ..Default::default()
    };
    let listener = Listener {
        name: authority.clone(),
        api_listener: Some(ApiListener {
            api_listener: Some(pack(type_url::HTTP_CONNECTION_MANAGER, &manager)),
        }),
        ..Default::default()
    };
    let routes = RouteConfiguration {
        name: authority.clone(),
        virtual_hosts: vec![VirtualHost {
            name: authority.clone(),
            domains: vec![authority.clone(), g.name.clone()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::Prefix(String::new())),
                    ..Default::default()
                }),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                        authority.clone(),
                    )),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut cluster = Cluster {
        name: authority.clone(),
        lb_policy: LbPolicy::RoundRobin as i32,
        ..Default::default()
    };
    make_eds(&mut cluster);
    drain_removed_hosts(&mut cluster);
    let cla = ClusterLoadAssignment {
        cluster_name: authority,
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: g.endpoints.iter().filter_map(lb_endpoint).collect(),
            load_balancing_weight: Some(UInt32Value { value: 1 }),
            locality: Some(Locality::default()),
            ..Default::default()
        }],
        ..Default::default()
    };
    (listener, routes, cluster, cla)
}

fn router_filter() -> HttpFilter {
    HttpFilter {
        name: type_url::ROUTER_FILTER.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack(
            type_url::ROUTER,
            &Router::default(),
        ))),
        ..Default::default()
    }
}

/// Concise retries: Envoy's `retry_policy` with the defaults above, and the
/// `previous_hosts` predicate, so that a retry goes to a host not tried yet
/// on Envoy and pylon-proxy alike (without it both ask their load balancer
/// again, which round robin answers with the next host in turn).
pub fn retry_policy(r: &schema::Retries) -> RetryPolicy {
    let on = r.on.as_deref().unwrap_or(&DEFAULT_RETRY_ON);
    RetryPolicy {
        retry_on: on.iter().map(|o| o.as_str()).collect::<Vec<_>>().join(","),
        num_retries: Some(UInt32Value {
            value: r.num_retries.unwrap_or(DEFAULT_NUM_RETRIES),
        }),
        per_try_timeout: r.per_try_timeout.map(|d| d.to_proto()),
        retriable_status_codes: r.retriable_status_codes.clone(),
        retry_host_predicate: vec![RetryHostPredicate {
            name: type_url::PREVIOUS_HOSTS_PREDICATE.to_string(),
            config_type: Some(retry_host_predicate::ConfigType::TypedConfig(Any {
                type_url: type_url::PREVIOUS_HOSTS.to_string(),
                value: Vec::new(),
            })),
        }],
        host_selection_retry_max_attempts: RETRY_HOST_SELECTION_ATTEMPTS,
        ..Default::default()
    }
}

/// A concise route: one match, one cluster, optional prefix rewrite,
/// timeout and retries.
pub fn route(r: &schema::Route) -> Route {
    let path_specifier = match (&r.prefix, &r.path, &r.path_separated_prefix) {
        (Some(prefix), _, _) => route_match::PathSpecifier::Prefix(prefix.clone()),
        (None, Some(path), _) => route_match::PathSpecifier::Path(path.clone()),
        (None, None, Some(prefix)) => {
            route_match::PathSpecifier::PathSeparatedPrefix(prefix.clone())
        }
        (None, None, None) => route_match::PathSpecifier::Prefix(String::new()),
    };
    Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(path_specifier),
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(r.cluster.clone())),
            prefix_rewrite: r.prefix_rewrite.clone().unwrap_or_default(),
            timeout: r.timeout.map(|d| d.to_proto()),
            retry_policy: r.retries.as_ref().map(retry_policy),
            ..Default::default()
        })),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{
        address, socket_address, Address, SocketAddress,
    };
    use envoy_types::pb::google::protobuf::Duration;
    use prost::Message;

    fn secs(seconds: i64) -> Option<Duration> {
        Some(Duration { seconds, nanos: 0 })
    }

    fn address(ip: &str, port: u32) -> Option<Address> {
        Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: ip.to_string(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        })
    }

    fn clusters(yaml: &str) -> Vec<(Cluster, ClusterLoadAssignment)> {
        let file: schema::File = serde_yaml::from_str(yaml).unwrap();
        file.clusters.iter().map(|c| cluster(c)).collect()
    }

    fn listeners(yaml: &str) -> Vec<(Listener, Option<RouteConfiguration>)> {
        let file: schema::File = serde_yaml::from_str(yaml).unwrap();
        file.listeners.iter().map(listener).collect()
    }

    fn eds_cluster(name: &str) -> Cluster {
        let mut c = Cluster {
            name: name.to_string(),
            connect_timeout: secs(5),
            ..Default::default()
        };
        make_eds(&mut c);
        drain_removed_hosts(&mut c);
        c
    }

    fn lb(ip: &str, port: u32, weight: u32) -> LbEndpoint {
        LbEndpoint {
            host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                address: address(ip, port),
                ..Default::default()
            })),
            load_balancing_weight: (weight != 1).then_some(UInt32Value { value: weight }),
            ..Default::default()
        }
    }

    fn cla(name: &str, lb_endpoints: Vec<LbEndpoint>) -> ClusterLoadAssignment {
        ClusterLoadAssignment {
            cluster_name: name.to_string(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints,
                load_balancing_weight: Some(UInt32Value { value: 1 }),
                locality: Some(Locality::default()),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn tcp_check(interval: i64, no_traffic: i64) -> HealthCheck {
        HealthCheck {
            timeout: secs(1),
            interval: secs(interval),
            unhealthy_threshold: Some(UInt32Value { value: 3 }),
            healthy_threshold: Some(UInt32Value { value: 2 }),
            no_traffic_interval: secs(no_traffic),
            health_checker: Some(health_check::HealthChecker::TcpHealthCheck(
                health_check::TcpHealthCheck::default(),
            )),
            ..Default::default()
        }
    }

    fn thresholds(
        connections: Option<u32>,
        pending: Option<u32>,
        requests: Option<u32>,
        retries: Option<u32>,
    ) -> Option<CircuitBreakers> {
        let value = |v: Option<u32>| v.map(|value| UInt32Value { value });
        Some(CircuitBreakers {
            thresholds: vec![Thresholds {
                priority: RoutingPriority::Default as i32,
                max_connections: value(connections),
                max_pending_requests: value(pending),
                max_requests: value(requests),
                max_retries: value(retries),
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    #[test]
    fn clusters_table() {
        let table: Vec<(&str, Cluster, ClusterLoadAssignment)> = vec![
            (
                "clusters: [{name: cb, circuit_breakers: {max_connections: 2, max_pending_requests: 1}}]",
                Cluster {
                    circuit_breakers: thresholds(Some(2), Some(1), None, None),
                    ..eds_cluster("cb")
                },
                cla("cb", vec![]),
            ),
            (
                "clusters: [{name: cb, circuit_breakers: {max_connections: 10, max_pending_requests: 20, max_requests: 30, max_retries: 4}}]",
                Cluster {
                    circuit_breakers: thresholds(Some(10), Some(20), Some(30), Some(4)),
                    ..eds_cluster("cb")
                },
                cla("cb", vec![]),
            ),
            (
                // Nothing given: no circuit_breakers at all (Envoy's defaults).
                "clusters: [{name: cb, circuit_breakers: {}}]",
                eds_cluster("cb"),
                cla("cb", vec![]),
            ),
            (
                "clusters: [{name: a, endpoints: [127.0.0.1:7001]}]",
                eds_cluster("a"),
                cla("a", vec![lb("127.0.0.1", 7001, 1)]),
            ),
            (
                "clusters: [{name: empty}]",
                eds_cluster("empty"),
                cla("empty", vec![]),
            ),
            (
                "clusters:\n- name: b\n  connect_timeout: 250ms\n  lb_policy: least_request\n  endpoints:\n  - '[::1]:80'\n  - {address: 127.0.0.2:81, weight: 2}\n",
                Cluster {
                    connect_timeout: Some(Duration { seconds: 0, nanos: 250_000_000 }),
                    lb_policy: LbPolicy::LeastRequest as i32,
                    ..eds_cluster("b")
                },
                cla("b", vec![lb("::1", 80, 1), lb("127.0.0.2", 81, 2)]),
            ),
            (
                "clusters: [{name: r, lb_policy: random, health_check: {tcp: {}}}]",
                Cluster {
                    lb_policy: LbPolicy::Random as i32,
                    health_checks: vec![tcp_check(10, 10)],
                    ..eds_cluster("r")
                },
                cla("r", vec![]),
            ),
            (
                "clusters: [{name: t, health_check: {tcp: {}, interval: 2s, no_traffic_interval: 60s}}]",
                Cluster {
                    health_checks: vec![tcp_check(2, 60)],
                    ..eds_cluster("t")
                },
                cla("t", vec![]),
            ),
            (
                "clusters:\n- name: h\n  health_check:\n    http: {path: /healthz, host: svc, expected_statuses: [200, 204]}\n    timeout: 2s\n    unhealthy_threshold: 5\n    healthy_threshold: 1\n",
                Cluster {
                    health_checks: vec![HealthCheck {
                        timeout: secs(2),
                        interval: secs(10),
                        unhealthy_threshold: Some(UInt32Value { value: 5 }),
                        healthy_threshold: Some(UInt32Value { value: 1 }),
                        no_traffic_interval: secs(10),
                        health_checker: Some(health_check::HealthChecker::HttpHealthCheck(
                            health_check::HttpHealthCheck {
                                path: "/healthz".to_string(),
                                host: "svc".to_string(),
                                expected_statuses: vec![
                                    Int64Range { start: 200, end: 201 },
                                    Int64Range { start: 204, end: 205 },
                                ],
                                ..Default::default()
                            },
                        )),
                        ..Default::default()
                    }],
                    ..eds_cluster("h")
                },
                cla("h", vec![]),
            ),
        ];
        for (yaml, want_cluster, want_cla) in table {
            let got = clusters(yaml);
            assert_eq!(got, vec![(want_cluster, want_cla)], "{yaml}");
        }
    }

    #[test]
    fn outlier_detection_table() {
        let value = |value| Some(UInt32Value { value });
        let table = [
            (
                // Nothing given: Envoy's defaults, but half the hosts may go.
                "clusters: [{name: o, outlier_detection: {}}]",
                OutlierDetection {
                    max_ejection_percent: value(50),
                    ..Default::default()
                },
            ),
            (
                "clusters: [{name: o, outlier_detection: {consecutive_5xx: 3, interval: 2s, base_ejection_time: 10s, max_ejection_percent: 34}}]",
                OutlierDetection {
                    consecutive_5xx: value(3),
                    interval: secs(2),
                    base_ejection_time: secs(10),
                    max_ejection_percent: value(34),
                    ..Default::default()
                },
            ),
            (
                // Asked for, gateway failures eject; local-origin errors are counted apart.
                "clusters: [{name: o, outlier_detection: {consecutive_gateway_failure: 2, consecutive_local_origin_failure: 1}}]",
                OutlierDetection {
                    consecutive_gateway_failure: value(2),
                    enforcing_consecutive_gateway_failure: value(100),
                    consecutive_local_origin_failure: value(1),
                    split_external_local_origin_errors: true,
                    max_ejection_percent: value(50),
                    ..Default::default()
                },
            ),
        ];
        for (yaml, want) in table {
            let got = clusters(yaml);
            assert_eq!(got[0].0.outlier_detection, Some(want), "{yaml}");
        }
        assert_eq!(
            clusters("clusters: [{name: none}]")[0].0.outlier_detection,
            None
        );
    }

    #[test]
    fn retries_table() {
        let previous_hosts = vec![RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".to_string(),
            config_type: Some(retry_host_predicate::ConfigType::TypedConfig(Any {
                type_url: "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate".to_string(),
                value: vec![],
            })),
        }];
        let table = [
            (
                "{prefix: /, cluster: c, retries: {}}",
                RetryPolicy {
                    retry_on: "connect-failure,reset,gateway-error".to_string(),
                    num_retries: Some(UInt32Value { value: 2 }),
                    retry_host_predicate: previous_hosts.clone(),
                    host_selection_retry_max_attempts: 3,
                    ..Default::default()
                },
            ),
            (
                "{prefix: /, cluster: c, retries: {on: [5xx, retriable-status-codes], retriable_status_codes: [409], num_retries: 1, per_try_timeout: 250ms}}",
                RetryPolicy {
                    retry_on: "5xx,retriable-status-codes".to_string(),
                    num_retries: Some(UInt32Value { value: 1 }),
                    per_try_timeout: Some(Duration {
                        seconds: 0,
                        nanos: 250_000_000,
                    }),
                    retriable_status_codes: vec![409],
                    retry_host_predicate: previous_hosts.clone(),
                    host_selection_retry_max_attempts: 3,
                    ..Default::default()
                },
            ),
        ];
        for (route, want) in table {
            let yaml = format!(
                "listeners: [{{name: h, address: 127.0.0.1:1, http: {{routes: [{route}]}}}}]"
            );
            let got = listeners(&yaml);
            let rc = got[0].1.as_ref().unwrap();
            let Some(route::Action::Route(a)) = &rc.virtual_hosts[0].routes[0].action else {
                panic!("no route action")
            };
            assert_eq!(a.retry_policy, Some(want), "{yaml}");
        }
    }

    fn filter_config<M: Message + Default>(l: &Listener) -> (String, String, M) {
        let f = &l.filter_chains[0].filters[0];
        let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
            panic!("no typed_config")
        };
        (
            f.name.clone(),
            any.type_url.clone(),
            M::decode(any.value.as_slice()).unwrap(),
        )
    }

    #[test]
    fn tcp_listeners_table() {
        let table = [
            (
                // Three connect attempts unless told otherwise.
                "listeners: [{name: k8s, address: 127.0.0.1:6443, tcp_proxy: {cluster: api}}]",
                TcpProxy {
                    stat_prefix: "k8s".to_string(),
                    cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster("api".to_string())),
                    max_connect_attempts: Some(UInt32Value { value: 3 }),
                    ..Default::default()
                },
            ),
            (
                "listeners: [{name: k8s, address: 127.0.0.1:6443, tcp_proxy: {cluster: api, max_connect_attempts: 1}}]",
                TcpProxy {
                    stat_prefix: "k8s".to_string(),
                    cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster("api".to_string())),
                    max_connect_attempts: Some(UInt32Value { value: 1 }),
                    ..Default::default()
                },
            ),
            (
                "listeners: [{name: k8s, address: 127.0.0.1:6443, tcp_proxy: {cluster: api, idle_timeout: 1h, max_connect_attempts: 5}}]",
                TcpProxy {
                    stat_prefix: "k8s".to_string(),
                    cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster("api".to_string())),
                    idle_timeout: secs(3600),
                    max_connect_attempts: Some(UInt32Value { value: 5 }),
                    ..Default::default()
                },
            ),
        ];
        for (yaml, want) in table {
            let got = listeners(yaml);
            let (l, routes) = &got[0];
            assert_eq!(l.name, "k8s");
            assert_eq!(l.address, address("127.0.0.1", 6443));
            assert_eq!(routes, &None);
            let (name, url, config) = filter_config::<TcpProxy>(l);
            assert_eq!(name, "envoy.filters.network.tcp_proxy");
            assert_eq!(url, type_url::TCP_PROXY);
            assert_eq!(config, want, "{yaml}");
        }
    }

    fn prefix_route(prefix: &str, cluster: &str) -> Route {
        Route {
            r#match: Some(RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::Prefix(prefix.to_string())),
                ..Default::default()
            }),
            action: Some(route::Action::Route(RouteAction {
                cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                    cluster.to_string(),
                )),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn http_listeners_table() {
        let mut rewritten = prefix_route("/service/2", "service2");
        if let Some(route::Action::Route(action)) = &mut rewritten.action {
            action.prefix_rewrite = "/".to_string();
            action.timeout = secs(30);
        }
        let exact = Route {
            r#match: Some(RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::Path("/x".to_string())),
                ..Default::default()
            }),
            ..prefix_route("", "c")
        };
        let separated = Route {
            r#match: Some(RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::PathSeparatedPrefix(
                    "/api".to_string(),
                )),
                ..Default::default()
            }),
            ..prefix_route("", "c")
        };
        let table = [
            (
                "listeners:\n- name: front\n  address: 127.0.0.1:8000\n  http:\n    routes:\n    - {prefix: /service/1, cluster: service1}\n    - {prefix: /service/2, cluster: service2, prefix_rewrite: /, timeout: 30s}\n",
                vec![VirtualHost {
                    name: "front".to_string(),
                    domains: vec!["*".to_string()],
                    routes: vec![prefix_route("/service/1", "service1"), rewritten],
                    ..Default::default()
                }],
            ),
            (
                "listeners:\n- name: front\n  address: 127.0.0.1:8000\n  http:\n    virtual_hosts:\n    - {name: a, domains: [a.test], routes: [{path: /x, cluster: c}]}\n    - {name: b, domains: [b.test, '*.b.test'], routes: [{path_separated_prefix: /api, cluster: c}]}\n",
                vec![
                    VirtualHost {
                        name: "a".to_string(),
                        domains: vec!["a.test".to_string()],
                        routes: vec![exact],
                        ..Default::default()
                    },
                    VirtualHost {
                        name: "b".to_string(),
                        domains: vec!["b.test".to_string(), "*.b.test".to_string()],
                        routes: vec![separated],
                        ..Default::default()
                    },
                ],
            ),
        ];
        for (yaml, want_hosts) in table {
            let got = listeners(yaml);
            let (l, routes) = &got[0];
            assert_eq!(l.address, address("127.0.0.1", 8000));
            let (name, url, hcm) = filter_config::<HttpConnectionManager>(l);
            assert_eq!(name, "envoy.filters.network.http_connection_manager");
            assert_eq!(url, type_url::HTTP_CONNECTION_MANAGER);
            assert_eq!(hcm.stat_prefix, "front");
            assert_eq!(
                hcm.route_specifier,
                Some(RouteSpecifier::Rds(Rds {
                    config_source: Some(ads_config_source()),
                    route_config_name: "front".to_string(),
                }))
            );
            assert_eq!(hcm.http_filters.len(), 1);
            assert_eq!(hcm.http_filters[0].name, "envoy.filters.http.router");
            assert_eq!(
                hcm.http_filters[0].config_type,
                Some(http_filter::ConfigType::TypedConfig(pack(
                    type_url::ROUTER,
                    &Router::default()
                )))
            );
            assert_eq!(
                routes,
                &Some(RouteConfiguration {
                    name: "front".to_string(),
                    virtual_hosts: want_hosts,
                    ..Default::default()
                }),
                "{yaml}"
            );
        }
    }
}
