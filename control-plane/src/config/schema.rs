//! The file as serde reads it: the concise form's types, and the top-level map
//! that holds them next to the Envoy-native `static_resources`.
//!
//! This file owns field names, defaults and the shape of each value (one serde
//! pass, so every structural error keeps its line and column). It does not
//! check relations between values (`validate`) or build protos (`translate`,
//! `native`). Every struct denies unknown fields, so a misspelt key is an
//! error, not a silently ignored setting.
//!
//! Each native cluster and listener is deserialized as a prost-reflect
//! `DynamicMessage` (protobuf JSON mapping, `"@type"` in `typed_config`,
//! unknown field names rejected) straight from serde_yaml's deserializer, so
//! its errors keep line and column too; the message is then encoded and
//! decoded as the envoy-types struct.

use std::fmt;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as EnvoyCluster;
use envoy_types::pb::envoy::config::listener::v3::Listener as EnvoyListener;
use prost::Message;
use prost_reflect::DynamicMessage;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::address::{Address, Target};
use super::duration::Duration;

/// One config file: concise clusters and listeners plus Envoy-native ones.
#[derive(Debug, Default)]
pub struct File {
    /// Shared: a reload keeps the clusters whose text did not change
    /// (`super::reuse`).
    pub clusters: Vec<std::sync::Arc<Cluster>>,
    pub listeners: Vec<Listener>,
    pub grpc_services: Vec<GrpcService>,
    pub nodes: Vec<NodeSelection>,
    pub clients: Vec<ClientRule>,
    pub static_resources: Option<StaticResources>,
}

/// One entry of `clients:`: a certificate identity and what it may do over
/// mutual TLS.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientRule {
    /// Glob on the certificate's URI SANs (a SPIFFE id, say).
    #[serde(default)]
    pub identity: Option<String>,
    /// Glob on the certificate's DNS SANs.
    #[serde(default)]
    pub dns: Option<String>,
    /// The nodes it may claim; absent: none.
    #[serde(default)]
    pub nodes: Option<ClientNodes>,
    /// Whether it may read every node's config over CSDS.
    #[serde(default)]
    pub csds: bool,
}

/// Globs on the node a client claims; every one given must hold.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientNodes {
    /// Glob on `node.id`.
    #[serde(default)]
    pub id: Option<String>,
    /// Glob on `node.cluster`.
    #[serde(default)]
    pub cluster: Option<String>,
}

/// A service for proxyless gRPC clients, which dial `xds:///{name}:{port}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcService {
    /// The host part of the target authority, e.g. `greeter.example`.
    pub name: String,
    /// The port part of the target authority.
    pub port: u16,
    /// May be empty: the service then has no backends and calls fail.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

/// One entry of `nodes:`: which nodes it matches and what they receive.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSelection {
    pub name: String,
    /// Absent: every node matches.
    #[serde(default, rename = "match")]
    pub matcher: Option<NodeMatch>,
    /// `all` or a list of listener names. Default: none.
    #[serde(default)]
    pub listeners: NameList,
    /// `all` or a list of cluster names, on top of the clusters the selected
    /// listeners use. Default: none.
    #[serde(default)]
    pub clusters: NameList,
}

/// Conditions on a node; every one given must hold.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeMatch {
    /// Glob on `node.id`.
    #[serde(default)]
    pub id: Option<String>,
    /// Glob on `node.cluster`.
    #[serde(default)]
    pub cluster: Option<String>,
    /// Key -> glob on the value of `node.metadata[key]`.
    #[serde(default)]
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// `all`, or a list of names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameList {
    All,
    Only(Vec<String>),
}

impl Default for NameList {
    fn default() -> Self {
        NameList::Only(Vec::new())
    }
}

impl<'de> Deserialize<'de> for NameList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NameListVisitor)
    }
}

struct NameListVisitor;

impl<'de> Visitor<'de> for NameListVisitor {
    type Value = NameList;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("`all` or a list of names")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<NameList, E> {
        if v == "all" {
            Ok(NameList::All)
        } else {
            Err(E::custom(format!(
                "expected `all` or a list of names, found {v:?} (write [{v}] for one name)"
            )))
        }
    }

    fn visit_unit<E: de::Error>(self) -> Result<NameList, E> {
        Ok(NameList::default())
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<NameList, A::Error> {
        let mut names = Vec::new();
        while let Some(name) = seq.next_element::<String>()? {
            names.push(name);
        }
        Ok(NameList::Only(names))
    }
}

/// A concise upstream cluster, served as an EDS cluster plus its endpoints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub name: String,
    /// Default 5s.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// Default round robin.
    #[serde(default)]
    pub lb_policy: LbPolicy,
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// May be empty: a cluster with no hosts is valid (and fails requests).
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Circuit breaker thresholds (DEFAULT priority); absent ones keep
    /// Envoy's defaults.
    #[serde(default)]
    pub circuit_breakers: Option<CircuitBreakers>,
    /// How long after an answer pylon-xds looks the cluster's host names up
    /// again (default 5s, as Envoy's `dns_refresh_rate`).
    #[serde(default)]
    pub dns_refresh: Option<Duration>,
    /// Passive health checking; absent: none.
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
}

/// A cluster's outlier detection. Every field is optional; what the
/// defaults become is `translate`'s business (documented in the README).
/// Ranges are checked by `validate`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    /// 5xx answers in a row that eject a host; 0 turns this detector off.
    #[serde(default)]
    pub consecutive_5xx: Option<u32>,
    /// 502, 503 and 504 answers in a row that eject a host.
    #[serde(default)]
    pub consecutive_gateway_failure: Option<u32>,
    /// Connect failures, timeouts and resets in a row that eject a host.
    #[serde(default)]
    pub consecutive_local_origin_failure: Option<u32>,
    /// Time between sweeps that return ejected hosts.
    #[serde(default)]
    pub interval: Option<Duration>,
    /// How long a first ejection lasts.
    #[serde(default)]
    pub base_ejection_time: Option<Duration>,
    /// Most hosts ejected at once, in percent of the cluster.
    #[serde(default)]
    pub max_ejection_percent: Option<u32>,
}

/// A cluster's circuit breakers. Each is at least 1 (checked by `validate`);
/// Envoy's defaults are 1024 connections, pending requests and requests, and
/// 3 retries.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakers {
    #[serde(default)]
    pub max_connections: Option<u32>,
    #[serde(default)]
    pub max_pending_requests: Option<u32>,
    #[serde(default)]
    pub max_requests: Option<u32>,
    #[serde(default)]
    pub max_retries: Option<u32>,
}

impl CircuitBreakers {
    /// The thresholds by field name, in the order they are documented.
    pub fn fields(&self) -> [(&'static str, Option<u32>); 4] {
        [
            ("max_connections", self.max_connections),
            ("max_pending_requests", self.max_pending_requests),
            ("max_requests", self.max_requests),
            ("max_retries", self.max_retries),
        ]
    }
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

/// The load balancing policies the concise form offers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    #[default]
    RoundRobin,
    LeastRequest,
    Random,
}

/// An active health check. Exactly one of `tcp`, `http` and `https` (checked
/// by `validate`, so every problem can be reported at once).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// `tcp: {}` (or just `tcp:`): connect, send nothing, expect nothing.
    #[serde(default, deserialize_with = "present")]
    pub tcp: Option<TcpCheck>,
    #[serde(default)]
    pub http: Option<HttpCheck>,
    /// An HTTP check over TLS; proxied connections stay plain TCP.
    #[serde(default)]
    pub https: Option<HttpsCheck>,
    /// Default 10s.
    #[serde(default = "default_interval")]
    pub interval: Duration,
    /// Default 1s.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// Default 3.
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    /// Default 2.
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    /// Default: `interval`. Envoy's own default (60s) means a freshly started
    /// Envoy notices a dead host only after a minute, which surprises users.
    #[serde(default)]
    pub no_traffic_interval: Option<Duration>,
}

fn default_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_timeout() -> Duration {
    Duration::from_secs(1)
}

fn default_unhealthy_threshold() -> u32 {
    3
}

fn default_healthy_threshold() -> u32 {
    2
}

/// A key that is present counts even when its value is empty (`tcp:`).
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Some(
        Option::<T>::deserialize(deserializer)?.unwrap_or_default(),
    ))
}

/// A TCP connect check; it has no settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpCheck {}

/// An HTTP GET check.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    pub path: String,
    /// The Host header; Envoy sends the cluster name when absent.
    #[serde(default)]
    pub host: Option<String>,
    /// Statuses counted as healthy; empty means Envoy's default (200).
    #[serde(default)]
    pub expected_statuses: Vec<u32>,
}

/// An HTTP GET check over TLS (kube-apiserver's `/readyz`): becomes a
/// `transport_socket_matches` entry that only the health check selects.
/// Exactly one of `ca` and `insecure_skip_verify: true` (checked by `validate`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpsCheck {
    pub path: String,
    /// The Host header; Envoy sends the cluster name when absent.
    #[serde(default)]
    pub host: Option<String>,
    /// Statuses counted as healthy; empty means Envoy's default (200).
    #[serde(default)]
    pub expected_statuses: Vec<u32>,
    /// A PEM CA file on the proxy's host (absolute path) that the server's
    /// certificate chain must lead to. Served as a `filename`, never inline.
    #[serde(default)]
    pub ca: Option<String>,
    /// Accept any server certificate (Envoy's behaviour without a CA).
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// The server name sent in the TLS handshake; none is sent when absent.
    #[serde(default)]
    pub sni: Option<String>,
}

/// One upstream host: `"ip:port"`, `"host:port"` (resolved by pylon-xds) or
/// `{address: ..., weight: 2}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub address: Target,
    /// Default 1; 0 is rejected by `validate`.
    pub weight: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointMap {
    address: Target,
    #[serde(default = "default_weight")]
    weight: u32,
}

fn default_weight() -> u32 {
    1
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(EndpointVisitor)
    }
}

struct EndpointVisitor;

impl<'de> Visitor<'de> for EndpointVisitor {
    type Value = Endpoint;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"ip:port\", \"host:port\" or {address: \"ip:port\", weight: N}")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Endpoint, E> {
        let address = super::address::parse_target(v).map_err(E::custom)?;
        Ok(Endpoint { address, weight: 1 })
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Endpoint, A::Error> {
        Err(de::Error::custom(super::address::UNQUOTED_IPV6))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Endpoint, A::Error> {
        let EndpointMap { address, weight } =
            EndpointMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(Endpoint { address, weight })
    }
}

/// A concise listener: exactly one of `tcp_proxy` and `http` (checked by
/// `validate`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    pub address: Address,
    #[serde(default)]
    pub tcp_proxy: Option<TcpProxy>,
    #[serde(default)]
    pub http: Option<Http>,
}

/// Forward every connection to one cluster.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpProxy {
    pub cluster: String,
    /// Envoy's default is 1h; `0s` disables the idle timeout.
    #[serde(default)]
    pub idle_timeout: Option<Duration>,
    /// At least 1; default 3 (Envoy's own default is 1), see `translate`.
    #[serde(default)]
    pub max_connect_attempts: Option<u32>,
}

/// HTTP routing: `routes` (one virtual host matching every domain) or
/// `virtual_hosts`, exactly one of the two.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    #[serde(default)]
    pub routes: Option<Vec<Route>>,
    #[serde(default)]
    pub virtual_hosts: Option<Vec<VirtualHost>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualHost {
    pub name: String,
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
}

/// One route: exactly one match (`prefix`, `path` or `path_separated_prefix`)
/// and the cluster to send matching requests to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    #[serde(default)]
    pub prefix: Option<String>,
    /// An exact path.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub path_separated_prefix: Option<String>,
    pub cluster: String,
    #[serde(default)]
    pub prefix_rewrite: Option<String>,
    /// The route timeout; Envoy's default is 15s, `0s` disables it.
    #[serde(default)]
    pub timeout: Option<Duration>,
    /// Retries of failed attempts on another host; absent: none.
    #[serde(default)]
    pub retries: Option<Retries>,
}

/// A route's retries. Defaults are `translate`'s (documented in the README).
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retries {
    /// What is retried.
    #[serde(default)]
    pub on: Option<Vec<RetryOn>>,
    /// Retries at most.
    #[serde(default)]
    pub num_retries: Option<u32>,
    /// Time each attempt may take until the response headers.
    #[serde(default)]
    pub per_try_timeout: Option<Duration>,
    /// Statuses retried under `retriable-status-codes`.
    #[serde(default)]
    pub retriable_status_codes: Vec<u32>,
}

/// A retry condition, spelled as in Envoy's `retry_on`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    /// The connection to the host failed or timed out.
    ConnectFailure,
    /// No response at all: a connect failure, a reset, a per-try timeout.
    Reset,
    /// A 502, 503 or 504 answer, or no response at all.
    GatewayError,
    /// Any 5xx answer, or no response at all.
    #[serde(rename = "5xx")]
    Status5xx,
    /// An answer among `retriable_status_codes`.
    RetriableStatusCodes,
}

impl RetryOn {
    /// Envoy's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryOn::ConnectFailure => "connect-failure",
            RetryOn::Reset => "reset",
            RetryOn::GatewayError => "gateway-error",
            RetryOn::Status5xx => "5xx",
            RetryOn::RetriableStatusCodes => "retriable-status-codes",
        }
    }
}

/// Keys that only make sense in an Envoy bootstrap.
const BOOTSTRAP_KEYS: &[&str] = &[
    "admin",
    "node",
    "dynamic_resources",
    "layered_runtime",
    "cluster_manager",
    "overload_manager",
    "stats_config",
    "stats_sinks",
    "tracing",
];

const TOP_LEVEL_KEYS: &[&str] = &[
    "clusters",
    "listeners",
    "grpc_services",
    "nodes",
    "clients",
    "static_resources",
];

fn unknown_top_level_key(key: &str) -> String {
    if BOOTSTRAP_KEYS.contains(&key) {
        format!(
            "`{key}` belongs to an Envoy bootstrap, not a pylon-xds config \
             (top-level keys: `clusters`, `listeners`, `grpc_services`, `nodes`, \
             `clients`, `static_resources`)"
        )
    } else {
        format!(
            "unknown top-level key `{key}`: expected `clusters`, `listeners`, \
             `grpc_services`, `nodes`, `clients` or `static_resources`"
        )
    }
}

impl<'de> Deserialize<'de> for File {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(FileVisitor)
    }
}

struct FileVisitor;

impl<'de> Visitor<'de> for FileVisitor {
    type Value = File;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "a map with `clusters`, `listeners`, `grpc_services`, `nodes`, `clients` and/or `static_resources`",
        )
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<File, A::Error> {
        let mut file = File::default();
        let mut seen = Vec::new();
        let keys = KeySeed {
            allowed: TOP_LEVEL_KEYS,
            unknown: unknown_top_level_key,
        };
        while let Some(key) = map.next_key_seed(keys)? {
            if seen.contains(&key) {
                return Err(de::Error::custom(format!("duplicate key `{key}`")));
            }
            seen.push(key);
            match key {
                "clusters" => {
                    file.clusters = map
                        .next_value::<Option<Vec<Cluster>>>()?
                        .unwrap_or_default()
                        .into_iter()
                        .map(std::sync::Arc::new)
                        .collect()
                }
                "listeners" => {
                    file.listeners = map.next_value::<Option<Vec<_>>>()?.unwrap_or_default()
                }
                "grpc_services" => {
                    file.grpc_services = map.next_value::<Option<Vec<_>>>()?.unwrap_or_default()
                }
                "nodes" => file.nodes = map.next_value::<Option<Vec<_>>>()?.unwrap_or_default(),
                "clients" => file.clients = map.next_value::<Option<Vec<_>>>()?.unwrap_or_default(),
                _ => file.static_resources = map.next_value()?,
            }
        }
        Ok(file)
    }
}

/// Reads a map key, accepting only `allowed`; any other key is an error whose
/// message `unknown` writes. Reading keys this way (rather than with
/// `deny_unknown_fields`) lets the message explain what belongs where.
#[derive(Clone, Copy)]
pub struct KeySeed {
    pub allowed: &'static [&'static str],
    pub unknown: fn(&str) -> String,
}

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = &'static str;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_identifier(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = &'static str;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<&'static str, E> {
        self.allowed
            .iter()
            .copied()
            .find(|allowed| *allowed == v)
            .ok_or_else(|| E::custom((self.unknown)(v)))
    }
}

/// `static_resources:` as pylon-xds accepts it: only clusters and listeners.
#[derive(Debug, Default)]
pub struct StaticResources {
    pub clusters: Vec<NativeCluster>,
    pub listeners: Vec<NativeListener>,
}

/// A `Cluster` read from its protobuf JSON mapping.
#[derive(Debug)]
pub struct NativeCluster(pub EnvoyCluster);

/// A `Listener` read from its protobuf JSON mapping.
#[derive(Debug)]
pub struct NativeListener(pub EnvoyListener);

/// Deserializes `M` through prost-reflect, using the descriptor `full_name`.
fn from_dynamic<'de, D, M>(deserializer: D, full_name: &str) -> Result<M, D::Error>
where
    D: Deserializer<'de>,
    M: Message + Default,
{
    let descriptor = pylon::descriptor_pool()
        .get_message_by_name(full_name)
        .ok_or_else(|| {
            de::Error::custom(format!(
                "{full_name} is missing from pylon's descriptor set (a build defect)"
            ))
        })?;
    let message = DynamicMessage::deserialize(descriptor, deserializer)?;
    M::decode(message.encode_to_vec().as_slice())
        .map_err(|e| de::Error::custom(format!("{full_name} does not decode: {e}")))
}

impl<'de> Deserialize<'de> for NativeCluster {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_dynamic(deserializer, "envoy.config.cluster.v3.Cluster").map(NativeCluster)
    }
}

impl<'de> Deserialize<'de> for NativeListener {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_dynamic(deserializer, "envoy.config.listener.v3.Listener").map(NativeListener)
    }
}

fn unknown_static_key(key: &str) -> String {
    if key == "secrets" {
        "`secrets` are not served by pylon-xds: static_resources may hold only `clusters` and `listeners`"
            .to_string()
    } else {
        format!("unknown field `{key}` in static_resources: expected `clusters` or `listeners`")
    }
}

impl<'de> Deserialize<'de> for StaticResources {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(StaticResourcesVisitor)
    }
}

struct StaticResourcesVisitor;

impl<'de> Visitor<'de> for StaticResourcesVisitor {
    type Value = StaticResources;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map with `clusters` and/or `listeners`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StaticResources, A::Error> {
        let mut resources = StaticResources::default();
        let mut seen = Vec::new();
        let keys = KeySeed {
            allowed: &["clusters", "listeners"],
            unknown: unknown_static_key,
        };
        while let Some(key) = map.next_key_seed(keys)? {
            if seen.contains(&key) {
                return Err(de::Error::custom(format!("duplicate key `{key}`")));
            }
            seen.push(key);
            if key == "clusters" {
                resources.clusters = map.next_value::<Option<Vec<_>>>()?.unwrap_or_default();
            } else {
                resources.listeners = map.next_value::<Option<Vec<_>>>()?.unwrap_or_default();
            }
        }
        Ok(resources)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<File, String> {
        serde_yaml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_filled_in() {
        let file =
            parse("clusters:\n- name: c\n  health_check: {tcp: }\n  endpoints: [127.0.0.1:1]\n")
                .unwrap();
        let c = &file.clusters[0];
        assert_eq!(c.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.lb_policy, LbPolicy::RoundRobin);
        let hc = c.health_check.as_ref().unwrap();
        assert!(hc.tcp.is_some() && hc.http.is_none());
        assert_eq!(hc.interval, Duration::from_secs(10));
        assert_eq!(hc.timeout, Duration::from_secs(1));
        assert_eq!((hc.unhealthy_threshold, hc.healthy_threshold), (3, 2));
        assert_eq!(hc.no_traffic_interval, None);
        assert_eq!(c.endpoints[0].weight, 1);
    }

    #[test]
    fn endpoints_take_both_spellings() {
        let file = parse(
            "clusters:\n- name: c\n  endpoints:\n  - 127.0.0.1:1\n  - {address: 127.0.0.2:2, weight: 3}\n",
        )
        .unwrap();
        let e = &file.clusters[0].endpoints;
        assert_eq!(
            (e[0].address.to_string().as_str(), e[0].weight),
            ("127.0.0.1:1", 1)
        );
        assert_eq!(
            (e[1].address.to_string().as_str(), e[1].weight),
            ("127.0.0.2:2", 3)
        );
    }

    #[test]
    fn top_level_keys_are_explained() {
        let err = parse("admin: {}\n").unwrap_err();
        assert!(
            err.starts_with("`admin` belongs to an Envoy bootstrap"),
            "{err}"
        );
        let err = parse("clustres: []\n").unwrap_err();
        assert!(err.starts_with("unknown top-level key `clustres`"), "{err}");
        let err = parse("clusters: []\nclusters: []\n").unwrap_err();
        assert!(err.starts_with("duplicate key `clusters`"), "{err}");
    }
}
