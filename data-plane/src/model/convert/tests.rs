//! Table tests for the conversions: Envoy YAML in (read through the
//! descriptor pool, as Envoy reads it), model or NACK message out.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as PbCluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener as PbListener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use prost::Message;
use prost_reflect::DynamicMessage;
use pylon::type_url;

use super::decode;
use crate::model::*;

/// Parses Envoy YAML as the proto `full_name`, then as the envoy-types `M`.
fn pb<M: Message + Default>(full_name: &str, yaml: &str) -> M {
    let desc = pylon::descriptor_pool()
        .get_message_by_name(full_name)
        .unwrap();
    let msg = DynamicMessage::deserialize(desc, serde_yaml::Deserializer::from_str(yaml))
        .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    M::decode(msg.encode_to_vec().as_slice()).unwrap()
}

fn cluster(yaml: &str) -> Result<Cluster, String> {
    let c: PbCluster = pb("envoy.config.cluster.v3.Cluster", yaml);
    Cluster::try_from(&c).map_err(|e| e.to_string())
}

fn cla(yaml: &str) -> Result<LoadAssignment, String> {
    let c: ClusterLoadAssignment = pb("envoy.config.endpoint.v3.ClusterLoadAssignment", yaml);
    LoadAssignment::try_from(&c).map_err(|e| e.to_string())
}

fn listener(yaml: &str) -> Result<Listener, String> {
    let l: PbListener = pb("envoy.config.listener.v3.Listener", yaml);
    Listener::try_from(&l).map_err(|e| e.to_string())
}

fn routes(yaml: &str) -> Result<RouteConfig, String> {
    let r: RouteConfiguration = pb("envoy.config.route.v3.RouteConfiguration", yaml);
    RouteConfig::try_from(&r).map_err(|e| e.to_string())
}

fn ep(addr: &str, weight: u32) -> Endpoint {
    Endpoint {
        addr: addr.parse().unwrap(),
        weight,
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

const EDS: &str = "name: a\ntype: EDS\neds_cluster_config: {eds_config: {ads: {}}}\n";

fn eds_cluster(name: &str, service: &str) -> Cluster {
    Cluster {
        name: name.into(),
        discovery: Discovery::Eds {
            service_name: service.into(),
        },
        connect_timeout: secs(5),
        lb_policy: LbPolicy::RoundRobin,
        health_check: None,
        healthy_panic_threshold: 50.0,
        circuit_breakers: Default::default(),
        outlier_detection: None,
        ignore_health_on_host_removal: false,
    }
}

fn tcp_check() -> HealthCheck {
    HealthCheck {
        interval: secs(10),
        timeout: secs(1),
        unhealthy_threshold: 3,
        healthy_threshold: 2,
        no_traffic_interval: secs(60),
        unhealthy_interval: secs(10),
        kind: HealthCheckKind::Tcp,
        tls: None,
    }
}

const HC: &str =
    "health_checks: [{timeout: 1s, interval: 10s, unhealthy_threshold: 3, healthy_threshold: 2";

#[test]
fn clusters_ok() {
    let table: Vec<(String, Cluster)> = vec![
        (EDS.to_string(), eds_cluster("a", "a")),
        (
            format!("{EDS}eds_cluster_config: {{service_name: svc, eds_config: {{ads: {{}}, resource_api_version: V3}}}}\nconnect_timeout: 0.25s\nlb_policy: ROUND_ROBIN\nalt_stat_name: x\ndns_lookup_family: V4_ONLY\ntyped_extension_protocol_options: {{envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {{'@type': type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, explicit_http_config: {{http2_protocol_options: {{}}}}}}}}\ncommon_lb_config: {{healthy_panic_threshold: {{value: 0}}}}\n")
                .replacen("eds_cluster_config: {eds_config: {ads: {}}}\n", "", 1),
            Cluster {
                connect_timeout: Duration::from_millis(250),
                healthy_panic_threshold: 0.0,
                ..eds_cluster("a", "svc")
            },
        ),
        (
            format!("{EDS}{HC}, tcp_health_check: {{}}}}]\n"),
            Cluster {
                health_check: Some(tcp_check()),
                ..eds_cluster("a", "a")
            },
        ),
        (
            format!("{EDS}{HC}, no_traffic_interval: 5s, unhealthy_interval: 2s, healthy_edge_interval: 10s, http_health_check: {{path: /readyz, host: api, expected_statuses: [{{start: 200, end: 300}}]}}}}]\n"),
            Cluster {
                health_check: Some(HealthCheck {
                    no_traffic_interval: secs(5),
                    unhealthy_interval: secs(2),
                    kind: HealthCheckKind::Http {
                        path: "/readyz".into(),
                        host: Some("api".into()),
                        expected_statuses: vec![(200, 300)],
                    },
                    tls: None,
                    ..tcp_check()
                }),
                ..eds_cluster("a", "a")
            },
        ),
        (
            format!("{EDS}{HC}, http_health_check: {{path: /healthz}}}}]\n"),
            Cluster {
                health_check: Some(HealthCheck {
                    kind: HealthCheckKind::Http {
                        path: "/healthz".into(),
                        host: None,
                        expected_statuses: vec![(200, 201)],
                    },
                    tls: None,
                    ..tcp_check()
                }),
                ..eds_cluster("a", "a")
            },
        ),
        (
            "name: s\nload_assignment:\n  cluster_name: other\n  endpoints:\n  - lb_endpoints:\n    - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 8081}}}\n    - endpoint: {address: {socket_address: {address: '::1', port_value: 8082}}}\n      load_balancing_weight: 3\n".to_string(),
            Cluster {
                discovery: Discovery::Static(LoadAssignment {
                    name: "s".into(),
                    endpoints: vec![ep("127.0.0.1:8081", 1), ep("[::1]:8082", 3)],
                }),
                ..eds_cluster("s", "")
            },
        ),
        (
            // The first DEFAULT entry counts; HIGH is ignored; unset values keep Envoy's defaults.
            format!("{EDS}circuit_breakers: {{thresholds: [{{priority: HIGH, max_connections: 1}}, {{max_connections: 2, max_pending_requests: 0, track_remaining: true}}, {{priority: DEFAULT, max_requests: 7}}]}}\n"),
            Cluster {
                circuit_breakers: CircuitBreakers {
                    max_connections: 2,
                    max_pending_requests: 0,
                    max_requests: 1024,
                    max_retries: 3,
                },
                ..eds_cluster("a", "a")
            },
        ),
        (
            format!("{EDS}circuit_breakers: {{thresholds: [{{priority: HIGH, max_connections: 1}}]}}\n"),
            eds_cluster("a", "a"),
        ),
        (
            format!("{EDS}circuit_breakers: {{thresholds: [{{max_connections: 10, max_pending_requests: 20, max_requests: 30, max_retries: 40}}]}}\n"),
            Cluster {
                circuit_breakers: CircuitBreakers {
                    max_connections: 10,
                    max_pending_requests: 20,
                    max_requests: 30,
                    max_retries: 40,
                },
                ..eds_cluster("a", "a")
            },
        ),
        (
            "name: empty\ntype: STATIC\n".to_string(),
            Cluster {
                discovery: Discovery::Static(LoadAssignment {
                    name: "empty".into(),
                    endpoints: vec![],
                }),
                ..eds_cluster("empty", "")
            },
        ),
    ];
    for (yaml, want) in table {
        assert_eq!(cluster(&yaml), Ok(want), "{yaml}");
    }
}

#[test]
fn clusters_nack() {
    let table: Vec<(String, &str)> = vec![
        (format!("{EDS}lb_policy: MAGLEV\n"), "cluster a: lb_policy MAGLEV is not supported"),
        (format!("{EDS}lb_policy: LEAST_REQUEST\n"), "cluster a: lb_policy LEAST_REQUEST is not supported"),
        ("name: a\ntype: LOGICAL_DNS\n".into(), "cluster a: LOGICAL_DNS clusters must have a single locality_lb_endpoint and a single lb_endpoint"),
        ("name: a\ntype: ORIGINAL_DST\n".into(), "cluster a: type ORIGINAL_DST is not supported"),
        ("name: a\ncluster_type: {name: envoy.clusters.aggregate}\n".into(), "cluster a: cluster_type envoy.clusters.aggregate is not supported"),
        ("name: a\ntype: EDS\n".into(), "cluster a: eds_cluster_config is required for an EDS cluster"),
        ("name: a\ntype: EDS\neds_cluster_config: {}\n".into(), "cluster a: eds_cluster_config.eds_config is required"),
        ("name: a\ntype: EDS\neds_cluster_config: {eds_config: {path_config_source: {path: /x}}}\n".into(), "cluster a: eds_cluster_config.eds_config.ads is required: only ADS is supported"),
        ("name: a\ntype: EDS\neds_cluster_config: {eds_config: {ads: {}, initial_fetch_timeout: 1s}}\n".into(), "cluster a: eds_cluster_config.eds_config.initial_fetch_timeout is not supported"),
        (format!("{EDS}load_assignment: {{cluster_name: a}}\n"), "cluster a: load_assignment is not supported"),
        ("name: a\neds_cluster_config: {eds_config: {ads: {}}}\n".into(), "cluster a: eds_cluster_config is not supported"),
        (format!("{EDS}transport_socket: {{name: envoy.transport_sockets.tls}}\n"), "cluster a: transport_socket.typed_config is required"),
        (format!("{EDS}circuit_breakers: {{per_host_thresholds: [{{max_connections: 10}}]}}\n"), "cluster a: circuit_breakers.per_host_thresholds is not supported"),
        (format!("{EDS}circuit_breakers: {{thresholds: [{{max_connections: 10}}, {{max_requests: 1, retry_budget: {{}}}}]}}\n"), "cluster a: circuit_breakers.thresholds[1].retry_budget is not supported"),
        (format!("{EDS}circuit_breakers: {{thresholds: [{{max_connection_pools: 10}}]}}\n"), "cluster a: circuit_breakers.thresholds[0].max_connection_pools is not supported"),
        (format!("{EDS}outlier_detection: {{monitors: [{{name: x}}]}}\n"), "cluster a: outlier_detection.monitors is not supported"),
        (format!("{EDS}outlier_detection: {{detect_degraded_hosts: true}}\n"), "cluster a: outlier_detection.detect_degraded_hosts is not supported"),
        (format!("{EDS}outlier_detection: {{enforcing_consecutive_5xx: 101}}\n"), "cluster a: outlier_detection.enforcing_consecutive_5xx 101 is not a percentage (0 to 100)"),
        (format!("{EDS}outlier_detection: {{max_ejection_percent: 200}}\n"), "cluster a: outlier_detection.max_ejection_percent 200 is not a percentage (0 to 100)"),
        (format!("{EDS}outlier_detection: {{interval: 0s}}\n"), "cluster a: outlier_detection.interval must be greater than 0"),
        (format!("{EDS}outlier_detection: {{base_ejection_time: 60s, max_ejection_time: 30s}}\n"), "cluster a: outlier_detection.max_ejection_time cannot be smaller than base_ejection_time"),
        (format!("{EDS}http2_protocol_options: {{max_concurrent_streams: 10}}\n"), "cluster a: http2_protocol_options is not supported"),
        (format!("{EDS}common_lb_config: {{healthy_panic_threshold: {{value: 150}}}}\n"), "cluster a: common_lb_config.healthy_panic_threshold 150 is not a percentage (0 to 100)"),
        (format!("{EDS}common_lb_config: {{ignore_new_hosts_until_first_hc: true}}\n"), "cluster a: common_lb_config.ignore_new_hosts_until_first_hc is not supported"),
        (format!("{EDS}ring_hash_lb_config: {{}}\n"), "cluster a: ring_hash_lb_config is not supported"),
        (format!("{EDS}connect_timeout: 0s\n"), "cluster a: connect_timeout must be greater than 0"),
        (format!("{EDS}wait_for_warm_on_init: false\n"), "cluster a: wait_for_warm_on_init false is not supported"),
        (format!("{EDS}{HC}, tcp_health_check: {{}}}}, {{timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {{}}}}]\n"), "cluster a: health_checks: only one health check is supported"),
        (format!("{EDS}health_checks: [{{interval: 10s, unhealthy_threshold: 3, healthy_threshold: 2, tcp_health_check: {{}}}}]\n"), "cluster a: health_checks[0].timeout is required"),
        (format!("{EDS}health_checks: [{{timeout: 1s, unhealthy_threshold: 3, healthy_threshold: 2, tcp_health_check: {{}}}}]\n"), "cluster a: health_checks[0].interval is required"),
        (format!("{EDS}health_checks: [{{timeout: 1s, interval: 1s, healthy_threshold: 2, tcp_health_check: {{}}}}]\n"), "cluster a: health_checks[0].unhealthy_threshold is required"),
        (format!("{EDS}health_checks: [{{timeout: 1s, interval: 1s, unhealthy_threshold: 2, tcp_health_check: {{}}}}]\n"), "cluster a: health_checks[0].healthy_threshold is required"),
        (format!("{EDS}{HC}}}]\n"), "cluster a: health_checks[0].a health checker (tcp_health_check or http_health_check) is required"),
        (format!("{EDS}{HC}, tcp_health_check: {{send: {{text: '00'}}}}}}]\n"), "cluster a: health_checks[0].tcp_health_check.send is not supported"),
        (format!("{EDS}{HC}, grpc_health_check: {{}}}}]\n"), "cluster a: health_checks[0].grpc_health_check is not supported"),
        (format!("{EDS}{HC}, interval_jitter: 1s, tcp_health_check: {{}}}}]\n"), "cluster a: health_checks[0].interval_jitter is not supported"),
        (format!("{EDS}{HC}, healthy_edge_interval: 3s, tcp_health_check: {{}}}}]\n"), "cluster a: health_checks[0].healthy_edge_interval is not supported (other than equal to interval)"),
        (format!("{EDS}{HC}, http_health_check: {{}}}}]\n"), "cluster a: health_checks[0].http_health_check.path is required"),
        (format!("{EDS}{HC}, http_health_check: {{path: /, codec_client_type: HTTP2}}}}]\n"), "cluster a: health_checks[0].http_health_check.codec_client_type HTTP2 is not supported"),
        (format!("{EDS}{HC}, http_health_check: {{path: /, method: POST}}}}]\n"), "cluster a: health_checks[0].http_health_check.method POST is not supported"),
        (format!("{EDS}{HC}, http_health_check: {{path: /, expected_statuses: [{{start: 200, end: 700}}]}}}}]\n"), "cluster a: health_checks[0].http_health_check.expected_statuses [200, 700) is not a range within [100, 600)"),
        (format!("{EDS}{HC}, http_health_check: {{path: /, request_headers_to_add: [{{header: {{key: a, value: b}}}}]}}}}]\n"), "cluster a: health_checks[0].http_health_check.request_headers_to_add is not supported"),
        ("name: s\nload_assignment: {endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: example.com, port_value: 80}}}}]}]}\n".into(), "cluster s: load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address \"example.com\" is not an IP address (DNS names are not supported)"),
        ("type: STATIC\n".into(), "cluster : name is required"),
    ];
    for (yaml, want) in table {
        assert_eq!(cluster(&yaml), Err(want.to_string()), "{yaml}");
    }
}

#[test]
fn load_assignments() {
    let ok = "cluster_name: svc\nendpoints:\n- locality: {zone: a}\n  load_balancing_weight: 5\n  lb_endpoints:\n  - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 80}}}\n  - endpoint: {address: {socket_address: {address: 127.0.0.2, port_value: 80}}}\n    health_status: UNHEALTHY\n  - endpoint: {address: {socket_address: {address: 127.0.0.3, port_value: 80}}}\n    health_status: DRAINING\n  - endpoint: {address: {socket_address: {address: 127.0.0.4, port_value: 80}}}\n    health_status: HEALTHY\n    load_balancing_weight: 2\n- lb_endpoints:\n  - endpoint: {address: {socket_address: {address: 127.0.1.1, port_value: 81}, }, hostname: h1}\n    health_status: DEGRADED\npolicy: {overprovisioning_factor: 140}\n";
    assert_eq!(
        cla(ok),
        Ok(LoadAssignment {
            name: "svc".into(),
            endpoints: vec![
                ep("127.0.0.1:80", 1),
                ep("127.0.0.4:80", 2),
                ep("127.0.1.1:81", 1)
            ],
        })
    );
    assert_eq!(
        cla("cluster_name: empty\n"),
        Ok(LoadAssignment {
            name: "empty".into(),
            endpoints: vec![]
        })
    );
    let sa = "{address: {socket_address: {address: 127.0.0.1, port_value: 80}}}";
    let table: Vec<(String, &str)> = vec![
        ("endpoints: []\n".into(), "load assignment : name is required"),
        (format!("cluster_name: c\nendpoints: [{{priority: 1, lb_endpoints: [{{endpoint: {sa}}}]}}]\n"), "load assignment c: endpoints[0].priority is not supported"),
        (format!("cluster_name: c\nendpoints: [{{lb_endpoints: [{{endpoint: {sa}, load_balancing_weight: 0}}]}}]\n"), "load assignment c: endpoints[0].lb_endpoints[0].load_balancing_weight must be at least 1"),
        ("cluster_name: c\nendpoints: [{lb_endpoints: [{endpoint_name: x}]}]\n".into(), "load assignment c: endpoints[0].lb_endpoints[0].endpoint_name is not supported"),
        ("cluster_name: c\nendpoints: [{lb_endpoints: [{endpoint: {address: {pipe: {path: /tmp/s}}}}]}]\n".into(), "load assignment c: endpoints[0].lb_endpoints[0].endpoint.address.pipe is not supported"),
        ("cluster_name: c\nendpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, named_port: http}}}}]}]\n".into(), "load assignment c: endpoints[0].lb_endpoints[0].endpoint.address.socket_address.named_port is not supported"),
        ("cluster_name: c\nendpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 70000}}}}]}]\n".into(), "load assignment c: endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value 70000 is out of range"),
        ("cluster_name: c\nendpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {protocol: UDP, address: 127.0.0.1, port_value: 53}}}}]}]\n".into(), "load assignment c: endpoints[0].lb_endpoints[0].endpoint.address.socket_address.protocol UDP is not supported"),
        ("cluster_name: c\nendpoints: [{lb_endpoints: [{endpoint: {}}]}]\n".into(), "load assignment c: endpoints[0].lb_endpoints[0].endpoint.address is required"),
        ("cluster_name: c\npolicy: {drop_overloads: [{category: x, drop_percentage: {numerator: 1}}]}\n".into(), "load assignment c: policy.drop_overloads is not supported"),
    ];
    for (yaml, want) in table {
        assert_eq!(cla(&yaml), Err(want.to_string()), "{yaml}");
    }
}

const TCP_TYPE: &str =
    "'@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const HCM_TYPE: &str = "'@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const ROUTER: &str = "{name: envoy.filters.http.router, typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}";
const ADDR: &str = "address: {socket_address: {address: 127.0.0.1, port_value: 6443}}";

fn tcp_listener(tcp: &str) -> String {
    format!("name: k8s\n{ADDR}\nfilter_chains: [{{filters: [{{name: envoy.filters.network.tcp_proxy, typed_config: {{{TCP_TYPE}, {tcp}}}}}]}}]\n")
}

fn http_listener(hcm: &str) -> String {
    format!("name: front\n{ADDR}\nfilter_chains: [{{filters: [{{name: envoy.filters.network.http_connection_manager, typed_config: {{{HCM_TYPE}, {hcm}}}}}]}}]\n")
}

fn tcp(cluster: &str, attempts: u32, idle: Option<Duration>) -> Listener {
    Listener {
        name: "k8s".into(),
        addr: "127.0.0.1:6443".parse().unwrap(),
        kind: ListenerKind::Tcp(TcpProxy {
            stat_prefix: "k8s".into(),
            cluster: cluster.into(),
            max_connect_attempts: attempts,
            idle_timeout: idle,
        }),
    }
}

fn http(routes: RouteSource) -> Listener {
    Listener {
        name: "front".into(),
        addr: "127.0.0.1:6443".parse().unwrap(),
        kind: ListenerKind::Http(HttpManager {
            stat_prefix: "front".into(),
            routes,
            limits: Default::default(),
            normalize_path: false,
            merge_slashes: false,
        }),
    }
}

#[test]
fn listeners_ok() {
    let table: Vec<(String, Listener)> = vec![
        (tcp_listener("stat_prefix: k8s, cluster: api"), tcp("api", 1, Some(secs(3600)))),
        (
            tcp_listener("stat_prefix: k8s, cluster: api, max_connect_attempts: 3, idle_timeout: 0s"),
            tcp("api", 3, None),
        ),
        (
            tcp_listener("stat_prefix: k8s, cluster: api, idle_timeout: 30s")
                .replace("filter_chains", "traffic_direction: INBOUND\nstat_prefix: x\nfilter_chains"),
            tcp("api", 1, Some(secs(30))),
        ),
        (
            // Legacy filter name, default_filter_chain, a catch-all match.
            format!("name: k8s\n{ADDR}\ndefault_filter_chain: {{filter_chain_match: {{}}, filters: [{{name: envoy.tcp_proxy, typed_config: {{{TCP_TYPE}, stat_prefix: k8s, cluster: api}}}}]}}\n"),
            tcp("api", 1, Some(secs(3600))),
        ),
        (
            http_listener(&format!("stat_prefix: front, codec_type: AUTO, rds: {{route_config_name: front, config_source: {{ads: {{}}, resource_api_version: V3}}}}, http_filters: [{ROUTER}]")),
            http(RouteSource::Rds("front".into())),
        ),
        (
            http_listener("stat_prefix: front, codec_type: HTTP2, route_config: {virtual_hosts: [{name: vh, domains: ['*'], routes: [{match: {prefix: /}, route: {cluster: c}}]}]}, http_filters: [{name: envoy.filters.http.router}]"),
            http(RouteSource::Inline(RouteConfig {
                name: String::new(),
                virtual_hosts: vec![VirtualHost {
                    name: "vh".into(),
                    domains: vec!["*".into()],
                    routes: vec![Route {
                        path: PathMatch::Prefix("/".into()),
                        action: RouteAction {
                            cluster: "c".into(),
                            prefix_rewrite: None,
                            timeout: Some(secs(15)),
                            retry_policy: None,
                            per_request_buffer_limit_bytes: None,
                        },
                    }],
                    retry_policy: None,
                    per_request_buffer_limit_bytes: None,
                }],
            })),
        ),
    ];
    for (yaml, want) in table {
        assert_eq!(listener(&yaml), Ok(want), "{yaml}");
    }
}

#[test]
fn http_limits_and_path_options() {
    let rds = "rds: {route_config_name: front, config_source: {ads: {}}}";
    let limits = |hcm: &str| -> (HttpLimits, bool, bool) {
        let l = listener(&http_listener(&format!(
            "stat_prefix: front, {hcm}{rds}, http_filters: [{ROUTER}]"
        )))
        .unwrap();
        let ListenerKind::Http(h) = l.kind else {
            panic!("not http")
        };
        (h.limits, h.normalize_path, h.merge_slashes)
    };
    let d = HttpLimits::default();
    assert_eq!(
        d,
        HttpLimits {
            request_headers_timeout: None,
            stream_idle_timeout: Some(secs(300)),
            idle_timeout: Some(secs(3600)),
            max_request_headers_kb: 60,
            max_headers_count: 100,
        }
    );
    let table: Vec<(&str, (HttpLimits, bool, bool))> = vec![
        ("", (d, false, false)),
        // 0 disables, as in Envoy; an empty options block keeps the defaults.
        (
            "request_headers_timeout: 0s, stream_idle_timeout: 0s, common_http_protocol_options: {idle_timeout: 0s}, ",
            (
                HttpLimits {
                    stream_idle_timeout: None,
                    idle_timeout: None,
                    ..d
                },
                false,
                false,
            ),
        ),
        ("common_http_protocol_options: {}, ", (d, false, false)),
        (
            "request_headers_timeout: 2s, stream_idle_timeout: 30s, max_request_headers_kb: 8, common_http_protocol_options: {idle_timeout: 90s, max_headers_count: 20, headers_with_underscores_action: ALLOW}, normalize_path: true, merge_slashes: true, ",
            (
                HttpLimits {
                    request_headers_timeout: Some(secs(2)),
                    stream_idle_timeout: Some(secs(30)),
                    idle_timeout: Some(secs(90)),
                    max_request_headers_kb: 8,
                    max_headers_count: 20,
                },
                true,
                true,
            ),
        ),
        ("normalize_path: false, ", (d, false, false)),
    ];
    for (hcm, want) in table {
        assert_eq!(limits(hcm), want, "{hcm}");
    }
}

#[test]
fn listeners_nack() {
    let rds = "rds: {route_config_name: front, config_source: {ads: {}}}";
    let chain = format!("{{filters: [{{name: envoy.filters.network.tcp_proxy, typed_config: {{{TCP_TYPE}, stat_prefix: k8s, cluster: api}}}}]}}");
    let table: Vec<(String, &str)> = vec![
        (http_listener(&format!("stat_prefix: front, {rds}")), "listener front: http_connection_manager.http_filters: the router (envoy.filters.http.router) is required"),
        (http_listener(&format!("stat_prefix: front, {rds}, http_filters: [{ROUTER}, {ROUTER}]")), "listener front: http_connection_manager.http_filters: only one router is supported"),
        (http_listener(&format!("stat_prefix: front, {rds}, http_filters: [{{name: envoy.filters.http.router, typed_config: {{'@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router, suppress_envoy_headers: true}}}}]")), "listener front: http filter envoy.filters.http.router: suppress_envoy_headers is not supported"),
        (http_listener(&format!("stat_prefix: front, http_filters: [{ROUTER}]")), "listener front: http_connection_manager.rds or route_config is required"),
        (http_listener(&format!("stat_prefix: front, rds: {{route_config_name: front, config_source: {{path_config_source: {{path: /r.yaml}}}}}}, http_filters: [{ROUTER}]")), "listener front: http_connection_manager.rds.config_source.ads is required: only ADS is supported"),
        (http_listener(&format!("stat_prefix: front, codec_type: HTTP3, {rds}, http_filters: [{ROUTER}]")), "listener front: http_connection_manager.codec_type HTTP3 is not supported"),
        (http_listener(&format!("stat_prefix: front, use_remote_address: true, {rds}, http_filters: [{ROUTER}]")), "listener front: http_connection_manager.use_remote_address is not supported"),
        (http_listener(&format!("stat_prefix: front, request_timeout: 10s, {rds}, http_filters: [{ROUTER}]")), "listener front: http_connection_manager.request_timeout is not supported"),
        (http_listener(&format!("stat_prefix: front, max_request_headers_kb: 8193, {rds}, http_filters: [{ROUTER}]")), "listener front: http_connection_manager.max_request_headers_kb 8193 is out of range 1..=8192"),
        (http_listener(&format!("stat_prefix: front, stream_idle_timeout: -1s, {rds}, http_filters: [{ROUTER}]")), "listener front: http_connection_manager.stream_idle_timeout must be a non-negative duration"),
        (http_listener(&format!("stat_prefix: front, common_http_protocol_options: {{max_headers_count: 0}}, {rds}, http_filters: [{ROUTER}]")), "listener front: http_connection_manager.common_http_protocol_options.max_headers_count must be at least 1"),
        (http_listener(&format!("stat_prefix: front, common_http_protocol_options: {{max_stream_duration: 1s}}, {rds}, http_filters: [{ROUTER}]")), "listener front: http_connection_manager.common_http_protocol_options.max_stream_duration is not supported"),
        (http_listener(&format!("stat_prefix: front, common_http_protocol_options: {{headers_with_underscores_action: REJECT_REQUEST}}, {rds}, http_filters: [{ROUTER}]")), "listener front: http_connection_manager.common_http_protocol_options.headers_with_underscores_action REJECT_REQUEST is not supported"),
        (http_listener(&format!("stat_prefix: front, path_normalization_options: {{forwarding_transformation: {{}}}}, {rds}, http_filters: [{ROUTER}]")), "listener front: http_connection_manager.path_normalization_options is not supported"),
        (http_listener(&format!("stat_prefix: front, route_config: {{virtual_hosts: [{{name: v, domains: ['*'], routes: [{{match: {{safe_regex: {{regex: '.*'}}}}, route: {{cluster: c}}}}]}}]}}, http_filters: [{ROUTER}]")), "listener front: http_connection_manager.route_config.virtual_hosts[0].routes[0].match.safe_regex is not supported"),
        (tcp_listener("stat_prefix: k8s"), "listener k8s: tcp_proxy.cluster is required"),
        (tcp_listener("stat_prefix: k8s, weighted_clusters: {clusters: [{name: a, weight: 1}]}"), "listener k8s: tcp_proxy.weighted_clusters is not supported"),
        (tcp_listener("stat_prefix: k8s, cluster: api, max_connect_attempts: 0"), "listener k8s: tcp_proxy.max_connect_attempts must be at least 1"),
        (tcp_listener("stat_prefix: k8s, cluster: api, access_log: [{name: envoy.access_loggers.stdout}]"), "listener k8s: tcp_proxy.access_log is not supported"),
        (tcp_listener("stat_prefix: k8s, cluster: api, idle_timeout: -1s"), "listener k8s: tcp_proxy.idle_timeout must be a non-negative duration"),
        (format!("name: k8s\n{ADDR}\nfilter_chains: [{chain}, {chain}]\n"), "listener k8s: filter_chains: only one filter chain is supported"),
        (format!("name: k8s\n{ADDR}\nfilter_chains: [{chain}]\ndefault_filter_chain: {chain}\n"), "listener k8s: filter_chains: only one filter chain is supported"),
        (format!("name: k8s\n{ADDR}\n"), "listener k8s: filter_chains: a filter chain is required"),
        (format!("name: k8s\n{ADDR}\nfilter_chains: [{{filters: []}}]\n"), "listener k8s: filter_chains[0].filters: a network filter is required"),
        (format!("name: k8s\n{ADDR}\nfilter_chains: [{{filter_chain_match: {{server_names: [a.test]}}, filters: [{{name: envoy.filters.network.tcp_proxy, typed_config: {{{TCP_TYPE}, stat_prefix: k8s, cluster: api}}}}]}}]\n"), "listener k8s: filter_chains[0].filter_chain_match is not supported"),
        (format!("name: k8s\n{ADDR}\nfilter_chains: [{{transport_socket: {{name: envoy.transport_sockets.tls}}, filters: [{{name: envoy.filters.network.tcp_proxy, typed_config: {{{TCP_TYPE}, stat_prefix: k8s, cluster: api}}}}]}}]\n"), "listener k8s: filter_chains[0].transport_socket is not supported"),
        (tcp_listener("stat_prefix: k8s, cluster: api").replace("filter_chains", "listener_filters: [{name: envoy.filters.listener.tls_inspector}]\nfilter_chains"), "listener k8s: listener_filters is not supported"),
        (tcp_listener("stat_prefix: k8s, cluster: api").replace(ADDR, "address: {socket_address: {address: localhost, port_value: 1}}"), "listener k8s: address.socket_address.address \"localhost\" is not an IP address (DNS names are not supported)"),
        (tcp_listener("stat_prefix: k8s, cluster: api").replace(ADDR, ""), "listener k8s: address is required"),
    ];
    for (yaml, want) in table {
        assert_eq!(listener(&yaml), Err(want.to_string()), "{yaml}");
    }
}

/// Filters whose config types are not in Pylon's descriptor pool (so not
/// writable in YAML here): built as protos.
#[test]
fn foreign_filters_nack() {
    use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        http_filter, HttpConnectionManager, HttpFilter,
    };
    use envoy_types::pb::google::protobuf::Any;

    let rds = "rds: {route_config_name: front, config_source: {ads: {}}}";
    let mut l: PbListener = pb(
        "envoy.config.listener.v3.Listener",
        &http_listener(&format!(
            "stat_prefix: front, {rds}, http_filters: [{ROUTER}]"
        )),
    );
    let Some(ConfigType::TypedConfig(any)) = &mut l.filter_chains[0].filters[0].config_type else {
        panic!("no typed_config")
    };
    let mut hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
    hcm.http_filters.insert(
        0,
        HttpFilter {
            name: "envoy.filters.http.jwt_authn".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(Any {
                type_url: "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication".into(),
                value: vec![],
            })),
            ..Default::default()
        },
    );
    any.value = hcm.encode_to_vec();
    assert_eq!(
        Listener::try_from(&l).unwrap_err().to_string(),
        "listener front: http filter envoy.filters.http.jwt_authn is not supported"
    );

    let mut l: PbListener = pb(
        "envoy.config.listener.v3.Listener",
        &tcp_listener("stat_prefix: k8s, cluster: api"),
    );
    l.filter_chains[0].filters[0].name = "envoy.filters.network.redis_proxy".into();
    l.filter_chains[0].filters[0].config_type = Some(ConfigType::TypedConfig(Any {
        type_url: "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy"
            .into(),
        value: vec![],
    }));
    assert_eq!(
        Listener::try_from(&l).unwrap_err().to_string(),
        "listener k8s: network filter envoy.filters.network.redis_proxy is not supported"
    );
    l.filter_chains[0].filters[0].config_type = Some(ConfigType::TypedConfig(Any {
        type_url: type_url::TCP_PROXY.into(),
        value: vec![0xff, 0xff],
    }));
    assert!(Listener::try_from(&l).unwrap_err().to_string().starts_with(
        "listener k8s: filter envoy.filters.network.redis_proxy: typed_config does not decode"
    ));
}

#[test]
fn routes_ok() {
    let yaml = "name: front\nvirtual_hosts:\n- name: a\n  domains: [a.test, '*.a.test']\n  routes:\n  - {name: r1, match: {prefix: /service/1}, route: {cluster: service1}}\n  - {match: {path: /x, case_sensitive: true}, route: {cluster: c, prefix_rewrite: /y, timeout: 0s}}\n  - {match: {path_separated_prefix: /api}, route: {cluster: c, timeout: 30s}}\n- {name: any, domains: ['*'], routes: []}\n";
    let action = |cluster: &str, rewrite: Option<&str>, timeout: Option<Duration>| RouteAction {
        cluster: cluster.into(),
        prefix_rewrite: rewrite.map(str::to_string),
        timeout,
        retry_policy: None,
        per_request_buffer_limit_bytes: None,
    };
    assert_eq!(
        routes(yaml),
        Ok(RouteConfig {
            name: "front".into(),
            virtual_hosts: vec![
                VirtualHost {
                    name: "a".into(),
                    domains: vec!["a.test".into(), "*.a.test".into()],
                    routes: vec![
                        Route {
                            path: PathMatch::Prefix("/service/1".into()),
                            action: action("service1", None, Some(secs(15))),
                        },
                        Route {
                            path: PathMatch::Exact("/x".into()),
                            action: action("c", Some("/y"), None),
                        },
                        Route {
                            path: PathMatch::SeparatedPrefix("/api".into()),
                            action: action("c", None, Some(secs(30))),
                        },
                    ],
                    retry_policy: None,
                    per_request_buffer_limit_bytes: None,
                },
                VirtualHost {
                    name: "any".into(),
                    domains: vec!["*".into()],
                    routes: vec![],
                    retry_policy: None,
                    per_request_buffer_limit_bytes: None,
                },
            ],
        })
    );
}

/// A virtual host's and its first route's retry policies and buffer limits.
type Policies = (
    Option<RetryPolicy>,
    Option<RetryPolicy>,
    Option<u32>,
    Option<u32>,
);

#[test]
fn retry_policies() {
    let policy = |yaml: &str| -> Result<Policies, String> {
        let rc = routes(&format!("name: r\nvirtual_hosts: [{yaml}]\n"))?;
        let vh = &rc.virtual_hosts[0];
        let a = &vh.routes[0].action;
        Ok((
            vh.retry_policy.clone(),
            a.retry_policy.clone(),
            vh.per_request_buffer_limit_bytes,
            a.per_request_buffer_limit_bytes,
        ))
    };
    let defaults = RetryPolicy {
        retry_on: RetryOn::default(),
        num_retries: 1,
        per_try_timeout: None,
        retriable_status_codes: vec![],
        base_interval: Duration::from_millis(25),
        max_interval: Duration::from_millis(250),
        previous_hosts: false,
        host_selection_retry_max_attempts: 1,
    };
    // A route's policy, with Envoy's defaults.
    let (vh, route, vh_limit, route_limit) = policy(
        "{name: v, domains: ['*'], routes: [{match: {prefix: /}, route: {cluster: c, retry_policy: {retry_on: 'connect-failure, reset,gateway-error,refused-stream'}}}]}",
    )
    .unwrap();
    assert_eq!((vh, vh_limit, route_limit), (None, None, None));
    assert_eq!(
        route,
        Some(RetryPolicy {
            retry_on: RetryOn {
                connect_failure: true,
                reset: true,
                gateway_error: true,
                ..RetryOn::default()
            },
            ..defaults.clone()
        })
    );
    // Everything set; the virtual host's policy and buffer limits.
    let (vh, route, vh_limit, route_limit) = policy(
        "{name: v, domains: ['*'], per_request_buffer_limit_bytes: 4096, retry_policy: {retry_on: 5xx, num_retries: 0}, routes: [{match: {prefix: /}, per_request_buffer_limit_bytes: 10, route: {cluster: c, retry_policy: {retry_on: '5xx,retriable-status-codes', retriable_status_codes: [409, 503], num_retries: 3, per_try_timeout: 0.5s, retry_back_off: {base_interval: 0.0001s}, host_selection_retry_max_attempts: 4, retry_host_predicate: [{name: envoy.retry_host_predicates.previous_hosts, typed_config: {'@type': type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate}}]}}}]}",
    )
    .unwrap();
    assert_eq!(
        vh,
        Some(RetryPolicy {
            retry_on: RetryOn {
                status_5xx: true,
                ..RetryOn::default()
            },
            num_retries: 0,
            ..defaults.clone()
        })
    );
    assert_eq!(
        route,
        Some(RetryPolicy {
            retry_on: RetryOn {
                status_5xx: true,
                retriable_status_codes: true,
                ..RetryOn::default()
            },
            num_retries: 3,
            per_try_timeout: Some(Duration::from_millis(500)),
            retriable_status_codes: vec![409, 503],
            // Below 1 ms is rounded up to 1 ms.
            base_interval: Duration::from_millis(1),
            max_interval: Duration::from_millis(10),
            previous_hosts: true,
            host_selection_retry_max_attempts: 4,
        })
    );
    assert_eq!((vh_limit, route_limit), (Some(4096), Some(10)));
}

#[test]
fn outlier_detection_defaults_and_fields() {
    let od = |extra: &str| {
        cluster(&format!("{EDS}outlier_detection: {{{extra}}}\n")).map(|c| c.outlier_detection)
    };
    assert_eq!(od(""), Ok(Some(Box::default())));
    assert_eq!(
        od("consecutive_5xx: 3, consecutive_gateway_failure: 0, consecutive_local_origin_failure: 2, split_external_local_origin_errors: true, interval: 1s, base_ejection_time: 400s, max_ejection_percent: 50, enforcing_consecutive_gateway_failure: 100, max_ejection_time_jitter: 0.5s, always_eject_one_host: true, successful_active_health_check_uneject_host: false, success_rate_minimum_hosts: 3, success_rate_request_volume: 10, success_rate_stdev_factor: 1000, failure_percentage_threshold: 50, enforcing_failure_percentage: 100, enforcing_failure_percentage_local_origin: 30, failure_percentage_minimum_hosts: 2, failure_percentage_request_volume: 7, enforcing_success_rate: 0, enforcing_local_origin_success_rate: 0, enforcing_consecutive_5xx: 90, enforcing_consecutive_local_origin_failure: 80"),
        Ok(Some(Box::new(OutlierDetection {
            consecutive_5xx: 3,
            consecutive_gateway_failure: 0,
            consecutive_local_origin_failure: 2,
            split_external_local_origin_errors: true,
            interval: secs(1),
            base_ejection_time: secs(400),
            // Unset: the larger of 300 s and the base ejection time.
            max_ejection_time: secs(400),
            max_ejection_time_jitter: Duration::from_millis(500),
            max_ejection_percent: 50,
            always_eject_one_host: true,
            enforcing_consecutive_5xx: 90,
            enforcing_consecutive_gateway_failure: 100,
            enforcing_consecutive_local_origin_failure: 80,
            enforcing_success_rate: 0,
            enforcing_local_origin_success_rate: 0,
            success_rate_minimum_hosts: 3,
            success_rate_request_volume: 10,
            success_rate_stdev_factor: 1000,
            failure_percentage_threshold: 50,
            enforcing_failure_percentage: 100,
            enforcing_failure_percentage_local_origin: 30,
            failure_percentage_minimum_hosts: 2,
            failure_percentage_request_volume: 7,
            successful_active_health_check_uneject_host: false,
        })))
    );
    // Carried as given: true leaves at once, false (Envoy's default) keeps a
    // removed host while it passes its checks.
    let c = cluster(&format!("{EDS}ignore_health_on_host_removal: true\n")).unwrap();
    assert!(c.ignore_health_on_host_removal);
    assert!(!cluster(EDS).unwrap().ignore_health_on_host_removal);
}

#[test]
fn routes_nack() {
    let vh = |routes: &str| {
        format!("name: r\nvirtual_hosts: [{{name: v, domains: ['*'], routes: [{routes}]}}]\n")
    };
    let table: Vec<(String, &str)> = vec![
        (vh("{match: {safe_regex: {regex: '^/a'}}, route: {cluster: c}}"), "route configuration r: virtual_hosts[0].routes[0].match.safe_regex is not supported"),
        (vh("{match: {prefix: /}, route: {weighted_clusters: {clusters: [{name: a, weight: 1}]}}}"), "route configuration r: virtual_hosts[0].routes[0].route.weighted_clusters is not supported"),
        (vh("{match: {prefix: /}, route: {cluster_header: x-cluster}}"), "route configuration r: virtual_hosts[0].routes[0].route.cluster_header is not supported"),
        (vh("{match: {prefix: /}, route: {}}"), "route configuration r: virtual_hosts[0].routes[0].route.cluster is required"),
        (vh("{match: {prefix: /}, redirect: {path_redirect: /x}}"), "route configuration r: virtual_hosts[0].routes[0].redirect is not supported"),
        (vh("{match: {prefix: /}, direct_response: {status: 200}}"), "route configuration r: virtual_hosts[0].routes[0].direct_response is not supported"),
        (vh("{match: {prefix: /, headers: [{name: x, present_match: true}]}, route: {cluster: c}}"), "route configuration r: virtual_hosts[0].routes[0].match.headers is not supported"),
        (vh("{match: {prefix: /, case_sensitive: false}, route: {cluster: c}}"), "route configuration r: virtual_hosts[0].routes[0].match.case_sensitive false is not supported"),
        (vh("{match: {}, route: {cluster: c}}"), "route configuration r: virtual_hosts[0].routes[0].match.prefix, path or path_separated_prefix is required"),
        (vh("{match: {prefix: /}, route: {cluster: c, retry_policy: {retry_on: '5xx,retriable-4xx'}}}"), "route configuration r: virtual_hosts[0].routes[0].route.retry_policy.retry_on retriable-4xx is not supported"),
        (vh("{match: {prefix: /}, route: {cluster: c, retry_policy: {retry_on: '5xx,bogus'}}}"), "route configuration r: virtual_hosts[0].routes[0].route.retry_policy.retry_on \"bogus\" is not a retry condition"),
        (vh("{match: {prefix: /}, route: {cluster: c, retry_policy: {retry_on: 5xx, per_try_idle_timeout: 1s}}}"), "route configuration r: virtual_hosts[0].routes[0].route.retry_policy.per_try_idle_timeout is not supported"),
        (vh("{match: {prefix: /}, route: {cluster: c, retry_policy: {retry_on: 5xx, retriable_headers: [{name: x, present_match: true}]}}}"), "route configuration r: virtual_hosts[0].routes[0].route.retry_policy.retriable_headers is not supported"),
        (vh("{match: {prefix: /}, route: {cluster: c, retry_policy: {retry_on: 5xx, retry_priority: {name: envoy.retry_priorities.previous_priorities}}}}"), "route configuration r: virtual_hosts[0].routes[0].route.retry_policy.retry_priority is not supported"),
        (vh("{match: {prefix: /}, route: {cluster: c, retry_policy: {retry_on: 5xx, retry_back_off: {max_interval: 1s}}}}"), "route configuration r: virtual_hosts[0].routes[0].route.retry_policy.retry_back_off.base_interval is required"),
        (vh("{match: {prefix: /}, route: {cluster: c, retry_policy: {retry_on: 5xx, retry_back_off: {base_interval: 2s, max_interval: 1s}}}}"), "route configuration r: virtual_hosts[0].routes[0].route.retry_policy.retry_back_off.max_interval must be at least base_interval"),
        (vh("{match: {prefix: /}, route: {cluster: c, retry_policy: {retry_on: retriable-status-codes, retriable_status_codes: [700]}}}"), "route configuration r: virtual_hosts[0].routes[0].route.retry_policy.retriable_status_codes 700 is not an HTTP status (100 to 599)"),
        (vh("{match: {prefix: /}, route: {cluster: c, retry_policy: {retry_on: 5xx, retry_host_predicate: [{name: envoy.retry_host_predicates.omit_canary_hosts, typed_config: {'@type': type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate}}, {name: x}]}}}"), "route configuration r: virtual_hosts[0].routes[0].route.retry_policy.retry_host_predicate[1].typed_config is required (retry host predicate x)"),
        (vh("{match: {prefix: /}, route: {cluster: c, retry_policy: {retry_on: 5xx, host_selection_retry_max_attempts: -1}}}"), "route configuration r: virtual_hosts[0].routes[0].route.retry_policy.host_selection_retry_max_attempts -1 must be a positive count"),
        (vh("{match: {prefix: /}, route: {cluster: c, retry_policy_typed_config: {'@type': type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate}}}"), "route configuration r: virtual_hosts[0].routes[0].route.retry_policy_typed_config is not supported"),
        ("name: r\nvirtual_hosts: [{name: v, domains: ['*'], hedge_policy: {}}]\n".into(), "route configuration r: virtual_hosts[0].hedge_policy is not supported"),
        (vh("{match: {prefix: /}, route: {cluster: c, host_rewrite_literal: x}}"), "route configuration r: virtual_hosts[0].routes[0].route.host_rewrite_literal is not supported"),
        (vh("{match: {prefix: /}, route: {cluster: c}, request_headers_to_add: [{header: {key: a, value: b}}]}"), "route configuration r: virtual_hosts[0].routes[0].request_headers_to_add is not supported"),
        ("name: r\nvirtual_hosts: [{name: v, domains: []}]\n".into(), "route configuration r: virtual_hosts[0].domains: at least one domain is required"),
        ("name: r\nvirtual_hosts: [{name: v, domains: ['*'], require_tls: ALL}]\n".into(), "route configuration r: virtual_hosts[0].require_tls is not supported"),
        ("name: r\nvalidate_clusters: true\n".into(), "route configuration r: validate_clusters true is not supported"),
        ("name: r\nvhds: {config_source: {ads: {}}}\n".into(), "route configuration r: vhds is not supported"),
        ("virtual_hosts: []\n".into(), "route configuration : name is required"),
    ];
    for (yaml, want) in table {
        assert_eq!(routes(&yaml), Err(want.to_string()), "{yaml}");
    }
}

#[test]
fn decode_checks_bytes_and_type() {
    let c: PbCluster = pb("envoy.config.cluster.v3.Cluster", EDS);
    let got = decode(type_url::CLUSTER, &c.encode_to_vec())
        .unwrap()
        .unwrap();
    assert_eq!(got.name(), "a");
    assert_eq!(got, super::Decoded::Cluster(eds_cluster("a", "a")));

    let err = decode(type_url::CLUSTER, &[0xff, 0xff, 0xff]).unwrap_err();
    assert_eq!(err.kind, None);
    assert!(
        err.to_string().starts_with(
            "resource type.googleapis.com/envoy.config.cluster.v3.Cluster: does not decode:"
        ),
        "{err}"
    );
    let err = decode(
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        &[],
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "resource type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret: this resource type is not supported"
    );
    // A valid proto that fails validation names the resource.
    let l: PbListener = pb("envoy.config.listener.v3.Listener", "name: l\n");
    assert_eq!(
        decode(type_url::LISTENER, &l.encode_to_vec())
            .unwrap_err()
            .to_string(),
        "listener l: address is required"
    );
    let r: RouteConfiguration = pb("envoy.config.route.v3.RouteConfiguration", "name: r\n");
    assert!(matches!(
        decode(type_url::ROUTE, &r.encode_to_vec()),
        Ok(Some(super::Decoded::RouteConfig(_)))
    ));
    let e: ClusterLoadAssignment = pb(
        "envoy.config.endpoint.v3.ClusterLoadAssignment",
        "cluster_name: e\n",
    );
    assert!(matches!(
        decode(type_url::ENDPOINT, &e.encode_to_vec()),
        Ok(Some(super::Decoded::LoadAssignment(_)))
    ));
    // An api_listener (for proxyless gRPC clients) is left out, not rejected.
    let api: PbListener = pb(
        "envoy.config.listener.v3.Listener",
        "name: greeter.example:50051
api_listener: {}
",
    );
    assert_eq!(decode(type_url::LISTENER, &api.encode_to_vec()), Ok(None));
}

const STRICT: &str = "name: d\ntype: STRICT_DNS\n";

fn dns_la(hosts: &[(&str, u32)]) -> String {
    let eps: Vec<String> = hosts
        .iter()
        .map(|(h, p)| {
            format!(
                "{{endpoint: {{address: {{socket_address: {{address: {h}, port_value: {p}}}}}}}}}"
            )
        })
        .collect();
    format!(
        "load_assignment: {{cluster_name: d, endpoints: [{{lb_endpoints: [{}]}}]}}\n",
        eps.join(", ")
    )
}

fn dns_of(c: Cluster) -> DnsDiscovery {
    match c.discovery {
        Discovery::Dns(d) => *d,
        other => panic!("not a DNS cluster: {other:?}"),
    }
}

#[test]
fn dns_clusters() {
    // Envoy's defaults: refresh 5 s, AUTO, the system's resolver, c-ares's 5 s / 4 tries.
    let d = dns_of(
        cluster(&format!(
            "{STRICT}{}",
            dns_la(&[("service1", 80), ("10.0.0.1", 81)])
        ))
        .unwrap(),
    );
    assert!(!d.logical);
    assert_eq!(
        d.targets,
        vec![
            DnsTarget {
                host: "service1".into(),
                port: 80,
                weight: 1
            },
            DnsTarget {
                host: "10.0.0.1".into(),
                port: 81,
                weight: 1
            },
        ]
    );
    assert_eq!(d.refresh_rate, secs(5));
    assert_eq!(d.failure_refresh, None);
    assert_eq!(d.lookup_family, LookupFamily::Auto);
    assert!(d.resolvers.is_empty() && !d.use_tcp && !d.respect_ttl);
    assert_eq!((d.query_timeout, d.query_tries), (secs(5), 4));

    // Every setting, with the c-ares resolver.
    let yaml = format!(
        "name: d\ntype: LOGICAL_DNS\n{}dns_refresh_rate: 2s\ndns_failure_refresh_rate: {{base_interval: 1s}}\nrespect_dns_ttl: true\ndns_jitter: 1s\ndns_lookup_family: V4_ONLY\n\
typed_dns_resolver_config:\n  name: envoy.network.dns_resolver.cares\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig\n    resolvers: [{{socket_address: {{address: 127.0.0.1, port_value: 15353}}}}]\n    dns_resolver_options: {{use_tcp_for_dns_lookups: true, no_default_search_domain: true}}\n    query_timeout_seconds: 1\n    query_tries: 2\n    udp_max_queries: 100\n",
        dns_la(&[("api.example", 6443)])
    );
    let d = dns_of(cluster(&yaml).unwrap());
    assert!(d.logical);
    assert_eq!(d.refresh_rate, secs(2));
    assert_eq!(d.failure_refresh, Some((secs(1), secs(10))));
    assert!(d.respect_ttl);
    assert_eq!(d.jitter, Some(secs(1)));
    assert_eq!(d.lookup_family, LookupFamily::V4Only);
    assert_eq!(d.resolvers, vec!["127.0.0.1:15353".parse().unwrap()]);
    assert!(d.use_tcp && d.no_default_search_domain);
    assert_eq!((d.query_timeout, d.query_tries), (secs(1), 2));

    // The older spellings of the resolver.
    let d = dns_of(cluster(&format!("{STRICT}dns_resolvers: [{{socket_address: {{address: 127.0.0.2, port_value: 53}}}}]\nuse_tcp_for_dns_lookups: true\n")).unwrap());
    assert_eq!(d.resolvers, vec!["127.0.0.2:53".parse().unwrap()]);
    assert!(d.use_tcp);
    let d = dns_of(cluster(&format!("{STRICT}dns_resolution_config: {{resolvers: [{{socket_address: {{address: 127.0.0.3, port_value: 5353}}}}]}}\n")).unwrap());
    assert_eq!(d.resolvers, vec!["127.0.0.3:5353".parse().unwrap()]);
    // getaddrinfo is the system's resolver.
    let d = dns_of(cluster(&format!("{STRICT}typed_dns_resolver_config: {{name: g, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.network.dns_resolver.getaddrinfo.v3.GetAddrInfoDnsResolverConfig}}}}\n")).unwrap());
    assert!(d.resolvers.is_empty());

    let nacks: Vec<(String, &str)> = vec![
        (format!("name: d\ntype: LOGICAL_DNS\n{}", dns_la(&[("a", 1), ("b", 2)])), "cluster d: LOGICAL_DNS clusters must have a single locality_lb_endpoint and a single lb_endpoint"),
        (format!("{STRICT}dns_refresh_rate: 0s\n"), "cluster d: dns_refresh_rate must be at least 1ms"),
        (format!("{STRICT}dns_failure_refresh_rate: {{base_interval: 2s, max_interval: 1s}}\n"), "cluster d: dns_failure_refresh_rate.max_interval must be at least base_interval"),
        (format!("{STRICT}typed_dns_resolver_config: {{name: c, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig, use_resolvers_as_fallback: true}}}}\n"), "cluster d: typed_dns_resolver_config.typed_config.use_resolvers_as_fallback is not supported"),
        (format!("{STRICT}typed_dns_resolver_config: {{name: c, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig, qcache_max_ttl: 60}}}}\n"), "cluster d: typed_dns_resolver_config.typed_config.qcache_max_ttl is not supported (pylon-proxy keeps no DNS cache)"),
        (format!("{STRICT}typed_dns_resolver_config: {{name: c, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer}}}}\n"), "cluster d: typed_dns_resolver_config.typed_config.type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer is not supported (c-ares or getaddrinfo)"),
        (format!("{STRICT}{}", dns_la(&[("a b", 80)]).replace("port_value: 80", "named_port: http")), "cluster d: load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.named_port is not supported"),
        (format!("{STRICT}eds_cluster_config: {{eds_config: {{ads: {{}}}}}}\n"), "cluster d: eds_cluster_config is not supported"),
    ];
    for (yaml, want) in nacks {
        assert_eq!(cluster(&yaml), Err(want.to_string()), "{yaml}");
    }
}

/// A CA file for the TLS tests.
fn ca_file() -> (tempfile::TempDir, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["pylon-test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca.crt");
    std::fs::write(&path, cert.pem()).unwrap();
    (dir, path.display().to_string())
}

fn tls_socket(ctx: &str) -> String {
    format!("{{name: envoy.transport_sockets.tls, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext{ctx}}}}}")
}

#[test]
fn health_checks_over_tls() {
    let (_dir, ca) = ca_file();
    let matches = format!(
        "transport_socket_matches:\n- name: hc\n  match: {{pylon.health_check: tls}}\n  transport_socket: {}\n",
        tls_socket(&format!(", sni: kubernetes, common_tls_context: {{validation_context: {{trusted_ca: {{filename: {ca}}}}}}}"))
    );
    let check = |criteria: &str| {
        format!("{HC}, transport_socket_match_criteria: {criteria}, http_health_check: {{path: /readyz}}}}]\n")
    };
    let c = cluster(&format!(
        "{EDS}{matches}{}",
        check("{pylon.health_check: tls, other: 1}")
    ))
    .unwrap();
    let tls = c.health_check.unwrap().tls.unwrap();
    assert_eq!(tls.sni.as_deref(), Some("kubernetes"));
    let trusted = tls.trusted_ca.unwrap();
    assert_eq!(trusted.filename, ca);
    assert_eq!(trusted.certs.len(), 1);
    // Criteria that select no entry: the cluster's plain socket.
    let c = cluster(&format!(
        "{EDS}{matches}{}",
        check("{pylon.health_check: plain}")
    ))
    .unwrap();
    assert_eq!(c.health_check.unwrap().tls, None);
    // No validation context: nothing verified, as in Envoy.
    let c = cluster(&format!(
        "{EDS}transport_socket_matches: [{{name: hc, match: {{k: v}}, transport_socket: {}}}]\n{}",
        tls_socket(""),
        check("{k: v}")
    ))
    .unwrap();
    assert_eq!(
        c.health_check.unwrap().tls,
        Some(UpstreamTls {
            sni: None,
            trusted_ca: None
        })
    );

    let nacks: Vec<(String, String)> = vec![
        (
            format!("{EDS}transport_socket: {}\n", tls_socket("")),
            "cluster a: transport_socket: TLS to proxied connections is not supported (TLS is for health checks only, through transport_socket_matches)".into(),
        ),
        (
            format!("{EDS}transport_socket_matches: [{{name: all, transport_socket: {}}}]\n", tls_socket("")),
            "cluster a: transport_socket_matches[0].match: an empty match applies to every endpoint's proxied connections, which pylon-proxy keeps plain; give it a key that only a health check's transport_socket_match_criteria names".into(),
        ),
        (
            format!("{EDS}transport_socket_matches: [{{name: m, match: {{k: v}}, transport_socket: {}}}]\n", tls_socket(", common_tls_context: {alpn_protocols: [h2]}")),
            "cluster a: transport_socket_matches[0].transport_socket.typed_config.common_tls_context.alpn_protocols is not supported".into(),
        ),
        (
            format!("{EDS}transport_socket_matches: [{{name: m, match: {{k: v}}, transport_socket: {}}}]\n", tls_socket(", common_tls_context: {validation_context: {trusted_ca: {inline_string: x}}}")),
            "cluster a: transport_socket_matches[0].transport_socket.typed_config.common_tls_context.validation_context.trusted_ca.only filename is supported (a CA file on the proxy's host)".into(),
        ),
        (
            format!("{EDS}transport_socket_matches: [{{name: m, match: {{k: v}}, transport_socket: {}}}]\n", tls_socket(", common_tls_context: {validation_context: {trusted_ca: {filename: /nonexistent/ca.crt}, match_typed_subject_alt_names: [{san_type: DNS, matcher: {exact: a}}]}}")),
            "cluster a: transport_socket_matches[0].transport_socket.typed_config.common_tls_context.validation_context.match_typed_subject_alt_names is not supported".into(),
        ),
        (
            format!("{EDS}transport_socket_matches: [{{name: m, match: {{k: v}}, transport_socket: {}}}]\n", tls_socket(", common_tls_context: {validation_context: {trusted_ca: {filename: /nonexistent/ca.crt}}}")),
            "cluster a: transport_socket_matches[0].transport_socket.typed_config.common_tls_context.validation_context.trusted_ca.filename: cannot read /nonexistent/ca.crt: No such file or directory (os error 2)".into(),
        ),
        (
            format!("{EDS}{HC}, tls_options: {{alpn_protocols: [h2]}}, tcp_health_check: {{}}}}]\n"),
            "cluster a: health_checks[0].tls_options is not supported".into(),
        ),
    ];
    for (yaml, want) in nacks {
        assert_eq!(cluster(&yaml), Err(want), "{yaml}");
    }
    let err = cla("cluster_name: a\nendpoints: [{lb_endpoints: [{metadata: {filter_metadata: {envoy.transport_socket_match: {k: v}}}, endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}}]}]\n").unwrap_err();
    assert_eq!(err, "load assignment a: endpoints[0].lb_endpoints[0].metadata.envoy.transport_socket_match is not supported (proxied connections are plain TCP)");
}
