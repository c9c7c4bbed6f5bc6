//! Pylon's own, validated view of the Envoy resources pylon-proxy honours.
//!
//! Everything past the xDS client works on these types, never on protos. The
//! conversions (`TryFrom` the envoy-types protos, in `convert`) destructure
//! every field: a field pylon-proxy cannot honour makes the resource fail with
//! a [`NackError`] that names the resource and the field, so the update is
//! NACKed and the last good config stays.
//!
//! Defaults documented here are Envoy's (see shared/reference/envoy-behaviour.md).

mod convert;

pub use convert::{decode, Decoded};

use std::net::SocketAddr;
use std::time::Duration;

/// Why a resource cannot be applied: names the resource and the field.
///
/// Display: `listener front: http filter envoy.filters.http.jwt_authn is not supported`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {name}: {message}")]
pub struct NackError {
    /// `cluster`, `listener`, `route configuration`, `load assignment`.
    pub kind: &'static str,
    /// The resource name.
    pub name: String,
    /// What is wrong, naming the field.
    pub message: String,
}

/// An upstream cluster (CDS, or `static_resources`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Cluster {
    /// Name.
    pub name: String,
    /// Where the endpoints come from.
    pub discovery: Discovery,
    /// Upstream connect timeout (default 5 s).
    pub connect_timeout: Duration,
    /// Load balancing policy (default round robin).
    pub lb_policy: LbPolicy,
    /// Active health checking (at most one checker is supported).
    pub health_check: Option<HealthCheck>,
    /// Healthy-host percentage below which every host is used (default 50; 0 disables panic mode).
    pub healthy_panic_threshold: f64,
    /// Circuit breaker thresholds of the DEFAULT priority.
    pub circuit_breakers: CircuitBreakers,
}

/// A cluster's circuit breakers (`circuit_breakers.thresholds` for the DEFAULT
/// priority), with Envoy's defaults.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct CircuitBreakers {
    /// Connections open to all hosts of the cluster at once (default 1024).
    pub max_connections: u32,
    /// Requests waiting for a connection (default 1024).
    pub max_pending_requests: u32,
    /// Requests in flight to all hosts at once (default 1024).
    pub max_requests: u32,
    /// Retries in flight at once (default 3; pylon-proxy does not retry, so it only shows).
    pub max_retries: u32,
}

impl Default for CircuitBreakers {
    fn default() -> Self {
        CircuitBreakers {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
        }
    }
}

/// Where a cluster's endpoints come from.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub enum Discovery {
    /// From EDS: the ClusterLoadAssignment of this name (the cluster name unless `service_name` is set).
    Eds {
        /// The load assignment name to subscribe to.
        service_name: String,
    },
    /// Inline `load_assignment` (STATIC).
    Static(LoadAssignment),
    /// Host names in the inline `load_assignment`, resolved by pylon-proxy
    /// (STRICT_DNS and LOGICAL_DNS; see `upstream::dns`). Boxed: it is
    /// larger than the other kinds.
    Dns(Box<DnsDiscovery>),
}

/// A STRICT_DNS or LOGICAL_DNS cluster's names and how they are resolved,
/// with Envoy's defaults.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct DnsDiscovery {
    /// LOGICAL_DNS: one host, the first address of the one name; else
    /// STRICT_DNS: every address of every name is a host.
    pub logical: bool,
    /// The names (or IP literals) to resolve, in order.
    pub targets: Vec<DnsTarget>,
    /// Time between lookups of a name (`dns_refresh_rate`, default 5 s).
    pub refresh_rate: Duration,
    /// After a failed lookup, wait `base`, doubling up to `max`
    /// (`dns_failure_refresh_rate`; default: `refresh_rate`).
    pub failure_refresh: Option<(Duration, Duration)>,
    /// Refresh after the answer's TTL instead of `refresh_rate` (`respect_dns_ttl`).
    pub respect_ttl: bool,
    /// Each wait is lengthened by a random amount below this (`dns_jitter`).
    pub jitter: Option<Duration>,
    /// Which address families are asked for (`dns_lookup_family`, default AUTO).
    pub lookup_family: LookupFamily,
    /// DNS servers to ask; empty: the system's (`/etc/resolv.conf`).
    pub resolvers: Vec<SocketAddr>,
    /// Ask the servers over TCP rather than UDP.
    pub use_tcp: bool,
    /// With `resolvers` given, do not append the system's search domains.
    pub no_default_search_domain: bool,
    /// Per-query timeout (c-ares `query_timeout_seconds`, default 5 s).
    pub query_timeout: Duration,
    /// Tries per server (c-ares `query_tries`, default 4).
    pub query_tries: u32,
}

/// One name of a DNS cluster.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq, Hash)]
pub struct DnsTarget {
    /// A host name or an IP literal.
    pub host: String,
    /// The port every address of the name gets.
    pub port: u16,
    /// The weight every address of the name gets (>= 1).
    pub weight: u32,
}

/// Envoy's `dns_lookup_family`.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq, Eq, Default)]
pub enum LookupFamily {
    /// AAAA, or A when there is none (Envoy's default).
    #[default]
    Auto,
    /// A only.
    V4Only,
    /// AAAA only.
    V6Only,
    /// A, or AAAA when there is none.
    V4Preferred,
    /// A and AAAA.
    All,
}

/// Load balancing policies pylon-proxy implements.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    /// Weighted round robin (earliest deadline first when weights differ).
    RoundRobin,
}

/// A cluster's endpoints (EDS `ClusterLoadAssignment`, or inline).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Default)]
pub struct LoadAssignment {
    /// The load assignment name (`cluster_name`).
    pub name: String,
    /// Endpoints, flattened across localities (locality and priority are not used).
    pub endpoints: Vec<Endpoint>,
}

/// One upstream host.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Its address (IP literal and port).
    pub addr: SocketAddr,
    /// Load balancing weight (>= 1, default 1).
    pub weight: u32,
}

/// Active health checking, with Envoy's semantics.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct HealthCheck {
    /// Time between checks of a host (required).
    pub interval: Duration,
    /// Time a check may take before it fails (required).
    pub timeout: Duration,
    /// Consecutive network failures that make a healthy host unhealthy (required).
    pub unhealthy_threshold: u32,
    /// Consecutive successes that make an unhealthy host healthy (required; the first check after a host is added decides alone).
    pub healthy_threshold: u32,
    /// Interval used until the cluster has carried traffic (default 60 s).
    pub no_traffic_interval: Duration,
    /// Interval for unhealthy hosts (default `interval`).
    pub unhealthy_interval: Duration,
    /// What a check does.
    pub kind: HealthCheckKind,
    /// The check runs over TLS (the cluster's `transport_socket_matches`
    /// entry its `transport_socket_match_criteria` selects); proxied
    /// connections stay plain.
    pub tls: Option<UpstreamTls>,
}

/// An `UpstreamTlsContext`, as far as pylon-proxy honours it (health checks only).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct UpstreamTls {
    /// Server name sent in the ClientHello (`sni`); none sent when `None`.
    pub sni: Option<String>,
    /// The CA the server's chain must lead to
    /// (`validation_context.trusted_ca.filename`). `None`: the server's
    /// certificate is not verified, as in Envoy without a validation context.
    pub trusted_ca: Option<TrustedCa>,
}

/// A CA file, read when the resource was accepted.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct TrustedCa {
    /// The file name, as configured.
    pub filename: String,
    /// Its certificates, DER.
    pub certs: Vec<Vec<u8>>,
}

/// The kind of health check.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub enum HealthCheckKind {
    /// Connect, then close; success on connect.
    Tcp,
    /// `GET path`; a status outside `expected_statuses` fails the host at once.
    Http {
        /// Request path.
        path: String,
        /// Host header (default: the cluster name, as Envoy does).
        host: Option<String>,
        /// Half-open ranges `[start, end)`; default `[200, 201)`.
        expected_statuses: Vec<(u16, u16)>,
    },
}

/// A listener (LDS, or `static_resources`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Listener {
    /// Name.
    pub name: String,
    /// Address to bind.
    pub addr: SocketAddr,
    /// What it does with connections.
    pub kind: ListenerKind,
}

/// The (single) network filter of a listener's (single) filter chain.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub enum ListenerKind {
    /// `envoy.filters.network.tcp_proxy`.
    Tcp(TcpProxy),
    /// `envoy.filters.network.http_connection_manager` with the router filter.
    Http(HttpManager),
}

/// TCP proxy settings.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct TcpProxy {
    /// Stats prefix (`tcp.<stat_prefix>.`).
    pub stat_prefix: String,
    /// Upstream cluster.
    pub cluster: String,
    /// Connect attempts, moving to the next host on failure (default 1).
    pub max_connect_attempts: u32,
    /// Idle timeout; `None` disables it (default 1 h).
    pub idle_timeout: Option<Duration>,
}

/// HTTP connection manager settings.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct HttpManager {
    /// Stats prefix (`http.<stat_prefix>.`).
    pub stat_prefix: String,
    /// Where the routes come from.
    pub routes: RouteSource,
    /// Timeouts and size limits of downstream connections and requests.
    pub limits: HttpLimits,
    /// Normalise paths (RFC 3986: `.` and `..` segments, percent-encoded
    /// unreserved characters) before routing and forwarding (default false).
    pub normalize_path: bool,
    /// Collapse runs of `/` in paths before routing and forwarding (default false).
    pub merge_slashes: bool,
}

/// The HTTP connection manager's timeouts and limits, with Envoy's defaults.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct HttpLimits {
    /// Time from the first byte of a request's headers to their last byte.
    /// `None`: not set (Envoy: disabled; pylon-proxy applies a built-in bound,
    /// see `listener::http::DEFAULT_REQUEST_HEADERS_TIMEOUT`).
    pub request_headers_timeout: Option<Duration>,
    /// Time a request may go without any activity in either direction;
    /// `None` disables it (default 5 min).
    pub stream_idle_timeout: Option<Duration>,
    /// Time a connection may stay without an active request
    /// (`common_http_protocol_options.idle_timeout`); `None` disables it (default 1 h).
    pub idle_timeout: Option<Duration>,
    /// Largest request header block, in KiB (default 60, at most 8192).
    pub max_request_headers_kb: u32,
    /// Most request headers (`common_http_protocol_options.max_headers_count`, default 100).
    pub max_headers_count: u32,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            request_headers_timeout: None,
            stream_idle_timeout: Some(Duration::from_secs(300)),
            idle_timeout: Some(Duration::from_secs(3600)),
            max_request_headers_kb: 60,
            max_headers_count: 100,
        }
    }
}

/// Route configuration source of an HTTP listener.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub enum RouteSource {
    /// Over RDS, by name.
    Rds(String),
    /// Inline.
    Inline(RouteConfig),
}

/// A route configuration (RDS, or inline).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Default)]
pub struct RouteConfig {
    /// Name.
    pub name: String,
    /// Virtual hosts, matched by domain.
    pub virtual_hosts: Vec<VirtualHost>,
}

/// A virtual host.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct VirtualHost {
    /// Name.
    pub name: String,
    /// Domains: exact, `*.suffix`, `prefix.*` or `*`.
    pub domains: Vec<String>,
    /// Routes, first match wins.
    pub routes: Vec<Route>,
}

/// One route.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Route {
    /// How the path is matched.
    pub path: PathMatch,
    /// Where a match goes.
    pub action: RouteAction,
}

/// Path matching.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub enum PathMatch {
    /// Plain string prefix (`/service/1` also matches `/service/10`).
    Prefix(String),
    /// Exact path (query excluded).
    Exact(String),
    /// Prefix that respects `/` segments.
    SeparatedPrefix(String),
}

/// What a matched route does.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct RouteAction {
    /// Upstream cluster.
    pub cluster: String,
    /// Replaces the matched prefix; sets `x-envoy-original-path`.
    pub prefix_rewrite: Option<String>,
    /// Route timeout; `None` disables it (default 15 s).
    pub timeout: Option<Duration>,
}
