//! Pylon's own, validated view of the Envoy resources pylon-proxy honours.
//!
//! Everything past the xDS client works on these types, never on protos. The
//! conversions (`TryFrom` the envoy-types protos, in `convert`) destructure
//! every field: a field pylon-proxy cannot honour makes the resource fail with
//! a [`NackError`] that names the resource and the field, so the update is
//! NACKed and the last good config stays.
//!
//! The files a resource names are read here too, when it is accepted (a CA
//! file: [`TrustedCa::read`]), so a missing one refuses the resource; the
//! layers below only use what was read.
//!
//! Defaults documented here are Envoy's (see docs/envoy-behaviour.md).

mod convert;

pub use convert::{decode, Decoded};

use std::net::SocketAddr;
use std::time::Duration;

use pylon::ResourceType;

/// Why a resource cannot be applied: names the resource (its type and
/// name) and the field. The xDS client finds the culprit of a refused update
/// by its type and name, not by comparing words.
///
/// Display: `listener front: http filter envoy.filters.http.jwt_authn is not supported`;
/// the type is spelled by [`ResourceType::noun`], or `resource` when unknown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} {name}: {message}", .kind.map_or("resource", ResourceType::noun))]
pub struct NackError {
    /// The resource's type; `None` when it could not be told (bytes that do
    /// not decode, or a type pylon-proxy does not read: the name is then the
    /// type URL).
    pub kind: Option<ResourceType>,
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
    /// Passive health checking (`outlier_detection`); `None` when unset.
    /// (Boxed: most clusters have none, and it is larger than the rest.)
    pub outlier_detection: Option<Box<OutlierDetection>>,
    /// Whether a host removed from the endpoints leaves at once even while it
    /// passes active health checks (default false: Envoy keeps such a host,
    /// flagged `/pending_dynamic_removal`, until its first failed check).
    pub ignore_health_on_host_removal: bool,
}

impl Cluster {
    /// A cluster with Envoy's defaults for everything but its name and
    /// discovery: 5 s connect timeout, round robin, no health checking,
    /// panic threshold 50%, default circuit breakers, no outlier detection.
    pub fn new(name: impl Into<String>, discovery: Discovery) -> Self {
        Cluster {
            name: name.into(),
            discovery,
            connect_timeout: Duration::from_secs(5),
            lb_policy: LbPolicy::RoundRobin,
            health_check: None,
            healthy_panic_threshold: 50.0,
            circuit_breakers: CircuitBreakers::default(),
            outlier_detection: None,
            ignore_health_on_host_removal: false,
        }
    }
}

/// Outlier detection (passive health checking) with Envoy's defaults.
///
/// Consecutive-error detectors eject at once when their count is reached;
/// the success-rate and failure-percentage detectors run every `interval`,
/// which is also when ejected hosts are returned to service. A count of 0
/// disables its detector; an `enforcing_*` percentage is the chance that a
/// detection really ejects.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct OutlierDetection {
    /// 5xx responses (and, unless split, local-origin errors mapped to 503
    /// or 504) in a row that eject a host (default 5).
    pub consecutive_5xx: u32,
    /// 502, 503 and 504 responses in a row that eject a host (default 5).
    pub consecutive_gateway_failure: u32,
    /// Local-origin errors (connect failure, timeout, reset) in a row that
    /// eject a host when `split_external_local_origin_errors` (default 5).
    pub consecutive_local_origin_failure: u32,
    /// Count local-origin errors apart from responses (default false).
    pub split_external_local_origin_errors: bool,
    /// Time between sweeps: success-rate analysis and returning hosts to
    /// service (default 10 s).
    pub interval: Duration,
    /// Ejection time of a first ejection; the n-th in a row lasts n times
    /// as long (default 30 s).
    pub base_ejection_time: Duration,
    /// Longest ejection (default the larger of 300 s and `base_ejection_time`).
    pub max_ejection_time: Duration,
    /// Random extra ejection time, at most this much (default 0).
    pub max_ejection_time_jitter: Duration,
    /// Most hosts ejected at once, as a percentage of the cluster (default 10).
    pub max_ejection_percent: u32,
    /// Eject one host even beyond `max_ejection_percent` (default false).
    pub always_eject_one_host: bool,
    /// Percent chance a consecutive-5xx detection ejects (default 100).
    pub enforcing_consecutive_5xx: u32,
    /// Percent chance a consecutive-gateway-failure detection ejects (default 0).
    pub enforcing_consecutive_gateway_failure: u32,
    /// Percent chance a consecutive-local-origin detection ejects (default 100).
    pub enforcing_consecutive_local_origin_failure: u32,
    /// Percent chance a success-rate detection ejects (default 100).
    pub enforcing_success_rate: u32,
    /// The same for the local-origin success rate (default 100).
    pub enforcing_local_origin_success_rate: u32,
    /// Hosts with enough requests needed for success-rate analysis (default 5).
    pub success_rate_minimum_hosts: u32,
    /// Requests per interval for a host to count in success-rate analysis (default 100).
    pub success_rate_request_volume: u32,
    /// The outlier threshold is `mean - stdev * factor / 1000` (default 1900).
    pub success_rate_stdev_factor: u32,
    /// Failure percentage at or above which a host is an outlier (default 85).
    pub failure_percentage_threshold: u32,
    /// Percent chance a failure-percentage detection ejects (default 0).
    pub enforcing_failure_percentage: u32,
    /// The same for the local-origin failure percentage (default 0).
    pub enforcing_failure_percentage_local_origin: u32,
    /// Hosts needed for failure-percentage analysis (default 5).
    pub failure_percentage_minimum_hosts: u32,
    /// Requests per interval for a host to count in failure-percentage analysis (default 50).
    pub failure_percentage_request_volume: u32,
    /// A passed active health check returns an ejected host to service (default true).
    pub successful_active_health_check_uneject_host: bool,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_5xx: 5,
            consecutive_gateway_failure: 5,
            consecutive_local_origin_failure: 5,
            split_external_local_origin_errors: false,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_time_jitter: Duration::ZERO,
            max_ejection_percent: 10,
            always_eject_one_host: false,
            enforcing_consecutive_5xx: 100,
            enforcing_consecutive_gateway_failure: 0,
            enforcing_consecutive_local_origin_failure: 100,
            enforcing_success_rate: 100,
            enforcing_local_origin_success_rate: 100,
            success_rate_minimum_hosts: 5,
            success_rate_request_volume: 100,
            success_rate_stdev_factor: 1900,
            failure_percentage_threshold: 85,
            enforcing_failure_percentage: 0,
            enforcing_failure_percentage_local_origin: 0,
            failure_percentage_minimum_hosts: 5,
            failure_percentage_request_volume: 50,
            successful_active_health_check_uneject_host: true,
        }
    }
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
    /// Retries outstanding at once, from the decision to retry until the
    /// retried attempt ends (default 3).
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

impl TrustedCa {
    /// Reads the PEM file `filename`: its certificates, DER. The file is read
    /// when the resource is accepted, so a missing or unreadable one refuses
    /// the resource; the error names the file and what is wrong with it.
    pub fn read(filename: &str) -> Result<TrustedCa, String> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::CertificateDer;
        let bytes = std::fs::read(filename).map_err(|e| format!("cannot read {filename}: {e}"))?;
        let certs: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(&bytes)
            .map(|c| c.map(|c| c.to_vec()))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{filename}: not a PEM certificate file: {e}"))?;
        if certs.is_empty() {
            return Err(format!("{filename} holds no PEM certificate"));
        }
        Ok(TrustedCa {
            filename: filename.to_string(),
            certs,
        })
    }
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
    /// The retry policy of routes that have none of their own.
    pub retry_policy: Option<RetryPolicy>,
    /// Largest request body kept for retries, for routes that set none
    /// (`per_request_buffer_limit_bytes`; `None`: [`DEFAULT_RETRY_BUFFER_LIMIT`]).
    pub per_request_buffer_limit_bytes: Option<u32>,
}

/// The request body kept for retries when nothing sets
/// `per_request_buffer_limit_bytes`: Envoy's default connection buffer limit
/// (1 MiB), which is what bounds its retry buffer then.
pub const DEFAULT_RETRY_BUFFER_LIMIT: u32 = 1024 * 1024;

/// A route's retry policy, with Envoy's defaults.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct RetryPolicy {
    /// What is retried.
    pub retry_on: RetryOn,
    /// Retries at most (default 1).
    pub num_retries: u32,
    /// Time each attempt may take until response headers; `None`: only the
    /// route timeout bounds it.
    pub per_try_timeout: Option<Duration>,
    /// Statuses retried under `retriable-status-codes`.
    pub retriable_status_codes: Vec<u16>,
    /// Back-off before the n-th retry: a random time below
    /// `min(base * 2^(n-1), max)` (defaults 25 ms and 10 x base).
    pub base_interval: Duration,
    /// See `base_interval`.
    pub max_interval: Duration,
    /// `envoy.retry_host_predicates.previous_hosts`: a retry avoids hosts
    /// already tried, picking again up to `host_selection_retry_max_attempts`
    /// times (default false: the load balancer's next pick, whatever it is).
    pub previous_hosts: bool,
    /// Picks per retry when `previous_hosts` rejects one (default 1).
    pub host_selection_retry_max_attempts: u32,
}

/// The `retry_on` conditions pylon-proxy implements.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct RetryOn {
    /// `5xx`: any 5xx response, a reset, a connect failure or a per-try timeout.
    pub status_5xx: bool,
    /// `gateway-error`: a 502, 503 or 504 response, a reset, a connect
    /// failure or a per-try timeout.
    pub gateway_error: bool,
    /// `reset`: no response at all (reset, connect failure, per-try timeout).
    pub reset: bool,
    /// `connect-failure`: the connection to the host failed or timed out.
    pub connect_failure: bool,
    /// `retriable-status-codes`: a status among `retriable_status_codes`.
    pub retriable_status_codes: bool,
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
    /// Retry policy; `None`: no retries (or the virtual host's policy).
    pub retry_policy: Option<RetryPolicy>,
    /// Largest request body kept for retries (`per_request_buffer_limit_bytes`).
    pub per_request_buffer_limit_bytes: Option<u32>,
}
