//! xDS type URLs and other protocol constants, in one place.

/// `envoy.config.cluster.v3.Cluster` (CDS).
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// `envoy.config.endpoint.v3.ClusterLoadAssignment` (EDS).
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// `envoy.config.listener.v3.Listener` (LDS).
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// `envoy.config.route.v3.RouteConfiguration` (RDS).
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// The tcp_proxy network filter's config.
pub const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
/// The HTTP connection manager network filter's config.
pub const HTTP_CONNECTION_MANAGER: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
/// The router HTTP filter's config.
pub const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
/// Upstream HTTP protocol options (used to make the xDS cluster speak HTTP/2).
pub const HTTP_PROTOCOL_OPTIONS: &str =
    "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
/// The `previous_hosts` retry host predicate's config: retries avoid the
/// hosts already tried.
pub const PREVIOUS_HOSTS: &str =
    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate";

/// Filter names, as Envoy spells them.
pub const TCP_PROXY_FILTER: &str = "envoy.filters.network.tcp_proxy";
/// The HTTP connection manager's filter name.
pub const HCM_FILTER: &str = "envoy.filters.network.http_connection_manager";
/// The router's HTTP filter name.
pub const ROUTER_FILTER: &str = "envoy.filters.http.router";
/// The `previous_hosts` retry host predicate's name.
pub const PREVIOUS_HOSTS_PREDICATE: &str = "envoy.retry_host_predicates.previous_hosts";

/// The explicit wildcard resource name.
pub const WILDCARD: &str = "*";
