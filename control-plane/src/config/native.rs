//! The Envoy-native form: `static_resources: {clusters, listeners}` exactly as
//! in an envoy.yaml, normalised into what an xDS server can serve. Reading it
//! (prost-reflect, in the same serde pass as the concise form) is `schema`'s.
//!
//! This file owns two things:
//! - Normalisation. A STATIC cluster becomes an EDS cluster over ADS and its
//!   `load_assignment` a `ClusterLoadAssignment`; an HTTP connection manager's
//!   inline `route_config` becomes a `RouteConfiguration` fetched over RDS/ADS.
//!   STRICT_DNS and LOGICAL_DNS clusters pass through unchanged.
//! - The checks only native values need (EDS clusters and `rds` cannot be
//!   served from a static file, ports, IP literals), and recording names and
//!   cluster references in the shared [`Catalog`] for `validate`.
//!
//! Filters are recognised by their `typed_config` `@type`, not their name, so
//! legacy names such as `envoy.tcp_proxy` work too.

use std::net::IpAddr;

use envoy_types::pb::envoy::config::cluster::v3::{
    cluster::{ClusterDiscoveryType, DiscoveryType},
    Cluster,
};
use envoy_types::pb::envoy::config::core::v3::{address, socket_address, SocketAddress};
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment};
use envoy_types::pb::envoy::config::listener::v3::{filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{route, route_action, RouteConfiguration};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager, Rds,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use prost::Message;
use pylon::type_url;

use super::issue::{Catalog, Issue, Named};
use super::proto::{ads_config_source, default_locality_weights, drain_removed_hosts, make_eds};
use super::schema::{NativeCluster, NativeListener, StaticResources};
use crate::resources::Resources;

/// Normalises the native resources into `out`, checking them and recording
/// their names and references in `catalog`.
///
/// `written` says whether the file itself sets the field at a path (proto3
/// cannot tell an explicit `false` from an absent field): a default Pylon
/// chooses differently from Envoy applies only where the user said nothing.
pub fn normalise(
    resources: StaticResources,
    written: &dyn Fn(&str) -> bool,
    out: &mut Resources,
    catalog: &mut Catalog,
    issues: &mut Vec<Issue>,
) {
    for (i, NativeCluster(mut c)) in resources.clusters.into_iter().enumerate() {
        let path = format!("static_resources.clusters[{i}]");
        if !written(&format!("{path}.ignore_health_on_host_removal")) {
            drain_removed_hosts(&mut c);
        }
        cluster(c, &path, out, catalog, issues);
    }
    for (i, NativeListener(l)) in resources.listeners.into_iter().enumerate() {
        listener(
            l,
            &format!("static_resources.listeners[{i}]"),
            out,
            catalog,
            issues,
        );
    }
}

fn cluster(
    mut c: Cluster,
    path: &str,
    out: &mut Resources,
    catalog: &mut Catalog,
    issues: &mut Vec<Issue>,
) {
    if c.name.is_empty() {
        issues.push(Issue::new(
            format!("{path}.name"),
            "cluster name must not be empty",
        ));
    }
    catalog
        .clusters
        .push(Named::new(&c.name, format!("{path}.name")));
    let kind = match &c.cluster_discovery_type {
        // `type` is STATIC when not given.
        None => Some(DiscoveryType::Static),
        Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(*t).ok(),
        Some(ClusterDiscoveryType::ClusterType(_)) => None,
    };
    match kind {
        Some(DiscoveryType::Static) => {
            let mut cla = c.load_assignment.take().unwrap_or_default();
            endpoints(&cla, &format!("{path}.load_assignment"), true, issues);
            cla.cluster_name = c.name.clone();
            default_locality_weights(&mut cla);
            make_eds(&mut c);
            out.endpoints.push(cla);
        }
        Some(DiscoveryType::Eds) => issues.push(Issue::new(
            format!("{path}.type"),
            "EDS clusters cannot be given in static_resources: pylon-xds serves endpoints \
             itself; make the cluster STATIC and list its endpoints in `load_assignment`",
        )),
        _ => {
            if let Some(cla) = &c.load_assignment {
                endpoints(cla, &format!("{path}.load_assignment"), false, issues);
            }
        }
    }
    out.clusters.push(c);
}

/// Checks every endpoint's socket address; `need_ip` when the endpoints will be
/// served over EDS, which carries IP addresses, not names to resolve.
fn endpoints(cla: &ClusterLoadAssignment, path: &str, need_ip: bool, issues: &mut Vec<Issue>) {
    for (l, locality) in cla.endpoints.iter().enumerate() {
        for (e, lb) in locality.lb_endpoints.iter().enumerate() {
            let Some(lb_endpoint::HostIdentifier::Endpoint(endpoint)) = &lb.host_identifier else {
                continue;
            };
            let Some(address::Address::SocketAddress(socket)) =
                endpoint.address.as_ref().and_then(|a| a.address.as_ref())
            else {
                continue;
            };
            socket_address(
                socket,
                &format!("{path}.endpoints[{l}].lb_endpoints[{e}].endpoint.address.socket_address"),
                need_ip,
                issues,
            );
        }
    }
}

/// Checks a socket address and returns its `ip:port` form.
fn socket_address(
    socket: &SocketAddress,
    path: &str,
    need_ip: bool,
    issues: &mut Vec<Issue>,
) -> String {
    let ip = socket.address.parse::<IpAddr>().ok();
    if need_ip && ip.is_none() {
        issues.push(Issue::new(
            format!("{path}.address"),
            format!(
                "`{}` is not an IP address; hostnames are not supported here \
                 (endpoints are served over EDS, which carries IP addresses)",
                socket.address
            ),
        ));
    }
    let port = match &socket.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(port)) => {
            if !(1..=65535).contains(port) {
                issues.push(Issue::new(
                    format!("{path}.port_value"),
                    format!("port {port} is out of range 1..=65535"),
                ));
            }
            port.to_string()
        }
        Some(socket_address::PortSpecifier::NamedPort(name)) => {
            issues.push(Issue::new(
                format!("{path}.named_port"),
                "named ports are not supported: give `port_value`",
            ));
            name.clone()
        }
        None => {
            issues.push(Issue::new(path, "`port_value` is required"));
            String::new()
        }
    };
    match ip {
        Some(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
        Some(ip) => format!("{ip}:{port}"),
        None => format!("{}:{port}", socket.address),
    }
}

fn listener(
    mut l: Listener,
    path: &str,
    out: &mut Resources,
    catalog: &mut Catalog,
    issues: &mut Vec<Issue>,
) {
    if l.name.is_empty() {
        issues.push(Issue::new(
            format!("{path}.name"),
            "listener name must not be empty",
        ));
    }
    catalog
        .listeners
        .push(Named::new(&l.name, format!("{path}.name")));
    match l.address.as_ref().and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(socket)) => {
            let apath = format!("{path}.address.socket_address");
            let key = socket_address(socket, &apath, true, issues);
            catalog
                .addresses
                .push(Named::new(key, format!("{path}.address")));
        }
        Some(_) => {}
        None => issues.push(Issue::new(path, "listener needs an `address`")),
    }
    let name = l.name.clone();
    let chains = l
        .filter_chains
        .iter_mut()
        .enumerate()
        .map(|(i, chain)| (format!("{path}.filter_chains[{i}]"), chain))
        .chain(
            l.default_filter_chain
                .as_mut()
                .map(|chain| (format!("{path}.default_filter_chain"), chain)),
        );
    for (cpath, chain) in chains {
        filter_chain(chain, &cpath, &name, out, catalog, issues);
    }
    out.listeners.push(l);
}

/// The message name of a type URL: the part after the last `/`.
fn message_name(type_url: &str) -> &str {
    type_url.rsplit('/').next().unwrap_or(type_url)
}

fn filter_chain(
    chain: &mut FilterChain,
    path: &str,
    listener_name: &str,
    out: &mut Resources,
    catalog: &mut Catalog,
    issues: &mut Vec<Issue>,
) {
    for (j, f) in chain.filters.iter_mut().enumerate() {
        let Some(filter::ConfigType::TypedConfig(any)) = &mut f.config_type else {
            continue;
        };
        let tpath = format!("{path}.filters[{j}].typed_config");
        let name = message_name(&any.type_url);
        if name == message_name(type_url::TCP_PROXY) {
            match TcpProxy::decode(any.value.as_slice()) {
                Ok(tcp) => tcp_proxy_refs(&tcp, &tpath, catalog),
                Err(e) => issues.push(Issue::new(tpath, format!("does not decode: {e}"))),
            }
        } else if name == message_name(type_url::HTTP_CONNECTION_MANAGER) {
            match HttpConnectionManager::decode(any.value.as_slice()) {
                Ok(mut hcm) => {
                    http_connection_manager(&mut hcm, &tpath, listener_name, out, catalog, issues);
                    any.value = hcm.encode_to_vec();
                }
                Err(e) => issues.push(Issue::new(tpath, format!("does not decode: {e}"))),
            }
        }
    }
}

fn tcp_proxy_refs(tcp: &TcpProxy, path: &str, catalog: &mut Catalog) {
    match &tcp.cluster_specifier {
        Some(tcp_proxy::ClusterSpecifier::Cluster(name)) => catalog
            .cluster_refs
            .push(Named::new(name, format!("{path}.cluster"))),
        Some(tcp_proxy::ClusterSpecifier::WeightedClusters(weighted)) => {
            for (k, c) in weighted.clusters.iter().enumerate() {
                catalog.cluster_refs.push(Named::new(
                    &c.name,
                    format!("{path}.weighted_clusters.clusters[{k}].name"),
                ));
            }
        }
        None => {}
    }
}

/// Moves an inline `route_config` out into a `RouteConfiguration` (named as
/// the listener when it has no name) and points the manager at it over ADS.
fn http_connection_manager(
    hcm: &mut HttpConnectionManager,
    path: &str,
    listener_name: &str,
    out: &mut Resources,
    catalog: &mut Catalog,
    issues: &mut Vec<Issue>,
) {
    match hcm.route_specifier.take() {
        Some(RouteSpecifier::RouteConfig(mut routes)) => {
            let rpath = format!("{path}.route_config");
            if routes.name.is_empty() {
                routes.name = listener_name.to_string();
            }
            catalog
                .route_configs
                .push(Named::new(&routes.name, rpath.clone()));
            route_refs(&routes, &rpath, catalog);
            hcm.route_specifier = Some(RouteSpecifier::Rds(Rds {
                config_source: Some(ads_config_source()),
                route_config_name: routes.name.clone(),
            }));
            out.routes.push(routes);
        }
        Some(RouteSpecifier::Rds(rds)) => {
            issues.push(Issue::new(
                format!("{path}.rds"),
                "`rds` cannot be used in static_resources: nothing would serve that route \
                 configuration; give the routes inline in `route_config`",
            ));
            hcm.route_specifier = Some(RouteSpecifier::Rds(rds));
        }
        Some(scoped @ RouteSpecifier::ScopedRoutes(_)) => {
            issues.push(Issue::new(
                format!("{path}.scoped_routes"),
                "`scoped_routes` is not supported; give the routes inline in `route_config`",
            ));
            hcm.route_specifier = Some(scoped);
        }
        None => issues.push(Issue::new(
            path,
            "the http connection manager needs an inline `route_config`",
        )),
    }
}

fn route_refs(routes: &RouteConfiguration, path: &str, catalog: &mut Catalog) {
    for (v, host) in routes.virtual_hosts.iter().enumerate() {
        for (r, route) in host.routes.iter().enumerate() {
            let Some(route::Action::Route(action)) = &route.action else {
                continue;
            };
            let apath = format!("{path}.virtual_hosts[{v}].routes[{r}].route");
            match &action.cluster_specifier {
                Some(route_action::ClusterSpecifier::Cluster(name)) => catalog
                    .cluster_refs
                    .push(Named::new(name, format!("{apath}.cluster"))),
                Some(route_action::ClusterSpecifier::WeightedClusters(weighted)) => {
                    for (k, c) in weighted.clusters.iter().enumerate() {
                        catalog.cluster_refs.push(Named::new(
                            &c.name,
                            format!("{apath}.weighted_clusters.clusters[{k}].name"),
                        ));
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::endpoint::v3::LocalityLbEndpoints;
    use envoy_types::pb::google::protobuf::UInt32Value;

    fn read(yaml: &str) -> (Resources, Catalog, Vec<Issue>) {
        let native: StaticResources = serde_yaml::from_str(yaml).unwrap();
        let mut out = Resources::default();
        let mut catalog = Catalog::default();
        let mut issues = Vec::new();
        let written = |path: &str| yaml.contains(path.rsplit('.').next().unwrap_or(path));
        normalise(native, &written, &mut out, &mut catalog, &mut issues);
        (out, catalog, issues)
    }

    #[test]
    fn static_clusters_become_eds() {
        let (out, _, issues) = read(
            r#"
clusters:
- name: service1
  connectTimeout: 0.25s
  type: STATIC
  load_assignment:
    cluster_name: whatever
    endpoints:
    - lb_endpoints:
      - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 8081}}}
- name: dns
  type: STRICT_DNS
  load_assignment:
    cluster_name: dns
    endpoints:
    - lb_endpoints:
      - endpoint: {address: {socket_address: {address: localhost, port_value: 80}}}
"#,
        );
        assert_eq!(issues, vec![]);
        let mut want = Cluster {
            name: "service1".to_string(),
            connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: 0,
                nanos: 250_000_000,
            }),
            ..Default::default()
        };
        make_eds(&mut want);
        drain_removed_hosts(&mut want);
        assert_eq!(out.clusters[0], want);
        assert_eq!(out.endpoints.len(), 1);
        assert_eq!(out.endpoints[0].cluster_name, "service1");
        assert_eq!(
            out.endpoints[0].endpoints[0].load_balancing_weight,
            Some(UInt32Value { value: 1 })
        );
        // STRICT_DNS passes through with its inline load_assignment.
        assert_eq!(
            out.clusters[1].cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32))
        );
        assert!(out.clusters[1].load_assignment.is_some());
        assert_eq!(
            out.clusters[1]
                .load_assignment
                .as_ref()
                .map(|l| &l.endpoints[0].load_balancing_weight),
            Some(&None)
        );
    }

    #[test]
    fn explicit_locality_weights_are_kept() {
        let (out, _, _) = read(
            "clusters: [{name: c, load_assignment: {endpoints: [{load_balancing_weight: 5}]}}]",
        );
        assert_eq!(
            out.endpoints[0].endpoints,
            vec![LocalityLbEndpoints {
                load_balancing_weight: Some(UInt32Value { value: 5 }),
                locality: Some(Default::default()),
                ..Default::default()
            }]
        );
    }

    #[test]
    fn inline_route_config_becomes_rds() {
        let (out, catalog, issues) = read(
            r#"
listeners:
- name: front
  address: {socket_address: {address: 127.0.0.1, port_value: 8000}}
  filter_chains:
  - filters:
    - name: envoy.http_connection_manager
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        stat_prefix: ingress_http
        route_config:
          virtual_hosts:
          - name: backend
            domains: ["*"]
            routes:
            - match: {prefix: /service/1}
              route: {cluster: service1}
            - match: {prefix: /service/2}
              route:
                weighted_clusters:
                  clusters: [{name: service2, weight: 1}, {name: service3, weight: 1}]
        http_filters:
        - name: envoy.filters.http.router
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#,
        );
        assert_eq!(issues, vec![]);
        assert_eq!(out.routes.len(), 1);
        assert_eq!(out.routes[0].name, "front");
        let Some(filter::ConfigType::TypedConfig(any)) =
            &out.listeners[0].filter_chains[0].filters[0].config_type
        else {
            panic!("no typed_config")
        };
        let hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
        assert_eq!(hcm.stat_prefix, "ingress_http");
        assert_eq!(
            hcm.route_specifier,
            Some(RouteSpecifier::Rds(Rds {
                config_source: Some(ads_config_source()),
                route_config_name: "front".to_string(),
            }))
        );
        let base = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0]";
        assert_eq!(
            catalog.cluster_refs,
            vec![
                Named::new("service1", format!("{base}.routes[0].route.cluster")),
                Named::new(
                    "service2",
                    format!("{base}.routes[1].route.weighted_clusters.clusters[0].name")
                ),
                Named::new(
                    "service3",
                    format!("{base}.routes[1].route.weighted_clusters.clusters[1].name")
                ),
            ]
        );
        assert_eq!(
            catalog.addresses,
            vec![Named::new(
                "127.0.0.1:8000",
                "static_resources.listeners[0].address"
            )]
        );
    }

    #[test]
    fn native_issues_table() {
        let table: &[(&str, &[(&str, &str)])] = &[
            (
                "clusters: [{name: e, type: EDS}]",
                &[("static_resources.clusters[0].type", "EDS clusters cannot be given in static_resources: pylon-xds serves endpoints itself; make the cluster STATIC and list its endpoints in `load_assignment`")],
            ),
            (
                "clusters: [{name: s, load_assignment: {endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: localhost, port_value: 70000}}}}]}]}}]",
                &[
                    ("static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address", "`localhost` is not an IP address; hostnames are not supported here (endpoints are served over EDS, which carries IP addresses)"),
                    ("static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value", "port 70000 is out of range 1..=65535"),
                ],
            ),
            (
                "listeners: [{name: l, address: {socket_address: {address: 127.0.0.1, port_value: 0}}, filter_chains: [{filters: [{name: h, typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: x, rds: {route_config_name: r}}}]}]}]",
                &[
                    ("static_resources.listeners[0].address.socket_address.port_value", "port 0 is out of range 1..=65535"),
                    ("static_resources.listeners[0].filter_chains[0].filters[0].typed_config.rds", "`rds` cannot be used in static_resources: nothing would serve that route configuration; give the routes inline in `route_config`"),
                ],
            ),
            (
                "listeners: [{name: l}]",
                &[("static_resources.listeners[0]", "listener needs an `address`")],
            ),
        ];
        for (yaml, want) in table {
            let want: Vec<Issue> = want.iter().map(|(p, m)| Issue::new(*p, *m)).collect();
            assert_eq!(read(yaml).2, want, "{yaml}");
        }
    }

    #[test]
    fn tcp_proxy_references_are_recorded() {
        let (_, catalog, issues) = read(
            "listeners: [{name: t, address: {socket_address: {address: '::1', port_value: 1}}, filter_chains: [{filters: [{name: envoy.tcp_proxy, typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, weighted_clusters: {clusters: [{name: a, weight: 1}]}}}]}]}]",
        );
        assert_eq!(issues, vec![]);
        assert_eq!(
            catalog.cluster_refs,
            vec![Named::new(
                "a",
                "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.weighted_clusters.clusters[0].name"
            )]
        );
        assert_eq!(catalog.addresses[0].name, "[::1]:1");
    }
}
