//! `pylon-proxy -c bootstrap.yaml`: the subset of Envoy's v3 bootstrap that
//! pylon-proxy supports.
//!
//! The file is read as Envoy reads it: the YAML is deserialized through
//! Pylon's descriptor pool as `envoy.config.bootstrap.v3.Bootstrap` (protobuf
//! JSON mapping, `"@type"` in `typed_config`, unknown field names rejected
//! with serde_yaml's line and column), then encoded and decoded as the
//! envoy-types struct. The struct is then walked with full destructuring:
//!
//! - `node`: `id` and `cluster`;
//! - `admin`: `address.socket_address` (`access_log_path: /dev/null` is
//!   accepted, as older configs carry it);
//! - `dynamic_resources`: `ads_config` (`api_type` GRPC or DELTA_GRPC, one
//!   `grpc_services` entry with `envoy_grpc.cluster_name` naming a cluster
//!   of `static_resources` whose endpoints are the xDS servers: one, or
//!   several replicas of it, tried in turn)
//!   and `cds_config`/`lds_config` as `ads: {}`;
//! - `static_resources`: `clusters` and `listeners`, converted with the same
//!   `TryFrom` as xDS resources. The xDS cluster is not a proxied cluster and
//!   is left out of [`Bootstrap::clusters`]. A static listener without a name
//!   is named after its address (Envoy would generate one).
//!
//! Any other field set -> `bootstrap: field <path> is not supported`.
//!
//! This module owns reading the file; it does not start anything.

// Deprecated proto fields must be named to destructure in full (and rejected
// when set), which the `deprecated` lint would flag.
#![allow(deprecated)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;

use envoy_types::pb::envoy::config::bootstrap::v3::{
    bootstrap::{DynamicResources, StaticResources},
    Admin, Bootstrap as PbBootstrap,
};
use envoy_types::pb::envoy::config::core::v3::{
    address, api_config_source::ApiType, config_source::ConfigSourceSpecifier, grpc_service,
    socket_address, Address, ApiConfigSource, ApiVersion, ConfigSource, GrpcService, Node,
};
use prost::Message;

use crate::model;
use envoy_types::pb::envoy::config::cluster::v3::Cluster as PbCluster;

/// What pylon-proxy takes from an Envoy bootstrap.
///
/// Serializable so a short-lived child process can parse the file and hand the
/// result over (see `pylon-proxy`'s main).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Bootstrap {
    /// `node.id` (required with `dynamic_resources`).
    pub node_id: String,
    /// `node.cluster`.
    pub node_cluster: String,
    /// `admin.address`, if an admin block is given.
    pub admin: Option<SocketAddr>,
    /// The ADS server, if `dynamic_resources` is given.
    pub xds: Option<XdsTarget>,
    /// Static clusters, without the xDS cluster.
    pub clusters: Vec<model::Cluster>,
    /// Static listeners.
    pub listeners: Vec<model::Listener>,
}

/// Where ADS is served, and how.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct XdsTarget {
    /// The endpoints of the xDS cluster, in order: replicas of the server.
    pub endpoints: Vec<XdsEndpoint>,
    /// `api_type: DELTA_GRPC` (incremental) rather than `GRPC` (state of the world).
    pub delta: bool,
    /// TLS to the server, from the cluster's `transport_socket`.
    pub tls: Option<XdsTls>,
}

/// One xDS server.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct XdsEndpoint {
    /// An IP address (a STATIC cluster) or a host name (STRICT_DNS or
    /// LOGICAL_DNS, resolved at each connect).
    pub host: String,
    /// Its port.
    pub port: u16,
}

impl XdsEndpoint {
    /// `host:port`, an IPv6 literal in brackets.
    pub fn target(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// TLS to the xDS server: the `UpstreamTlsContext` subset pylon-proxy reads
/// (files only; they are reloaded when they change).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct XdsTls {
    /// `validation_context.trusted_ca.filename`: the CA the server's
    /// certificate must chain to.
    pub ca: std::path::PathBuf,
    /// `tls_certificates[0]`: the client certificate and key files, for
    /// mutual TLS.
    pub cert_key: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// The name the server's certificate must carry: `sni`, else the exact
    /// value of `validation_context.match_typed_subject_alt_names`, else
    /// (`None`) the host of the endpoint being dialled.
    pub server_name: Option<String>,
}

/// Why a bootstrap file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The file cannot be read.
    #[error("{file}: {source}")]
    Read {
        /// The path.
        file: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not valid YAML, beyond the bounds of [`pylon::yaml::Limits`], or not a
    /// v3 Bootstrap (unknown field names included). Written as pylon-xds
    /// writes config errors: `file:line:column: path: message`.
    #[error("{file}:{line}:{column}: {path}: {message}")]
    Parse {
        /// The file name.
        file: String,
        /// 1-based line (0 when unknown).
        line: usize,
        /// 1-based column (0 when unknown).
        column: usize,
        /// The path of the offending node, like `admin.address`.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A valid Bootstrap that pylon-proxy cannot honour.
    #[error("{file}: bootstrap: {message}")]
    Invalid {
        /// The file name.
        file: String,
        /// What is wrong, naming the field.
        message: String,
    },
}

/// Reads and checks the bootstrap at `path` (at most
/// [`pylon::yaml::Limits::max_bytes`] of it).
pub fn load(path: &Path) -> anyhow::Result<Bootstrap> {
    use std::io::Read as _;
    let file = path.display().to_string();
    let limits = pylon::yaml::Limits::default();
    let read = |source| BootstrapError::Read {
        file: file.clone(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(limits.max_bytes as u64 + 1).read_to_end(&mut bytes))
        .map_err(read)?;
    let parse_error = |(line, column), message: String| BootstrapError::Parse {
        file: file.clone(),
        line,
        column,
        path: ".".to_string(),
        message,
    };
    if bytes.len() > limits.max_bytes {
        return Err(parse_error(
            (0, 0),
            format!("the file is larger than {} bytes", limits.max_bytes),
        )
        .into());
    }
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        parse_error(
            pylon::yaml::line_column(&bytes, e.valid_up_to()),
            "invalid UTF-8: a bootstrap must be UTF-8 text".to_string(),
        )
    })?;
    Ok(parse(&file, text)?)
}

/// Parses and checks a bootstrap; `file_name` only labels errors.
pub fn parse(file_name: &str, text: &str) -> Result<Bootstrap, BootstrapError> {
    let pb = read_proto(file_name, text)?;
    walk(&pb).map_err(|message| BootstrapError::Invalid {
        file: file_name.to_string(),
        message,
    })
}

const BOOTSTRAP: &str = "envoy.config.bootstrap.v3.Bootstrap";

fn read_proto(file_name: &str, text: &str) -> Result<PbBootstrap, BootstrapError> {
    use serde::de::DeserializeSeed as _;
    let invalid = |message: String| BootstrapError::Invalid {
        file: file_name.to_string(),
        message,
    };
    let parse_error = |l: pylon::yaml::Located| BootstrapError::Parse {
        file: file_name.to_string(),
        line: l.position.0,
        column: l.position.1,
        path: l.path,
        message: l.message,
    };
    // Bounded (depth, nodes, no aliases) before serde sees it, with every
    // node's position for the errors.
    let index = pylon::yaml::scan(text, &pylon::yaml::Limits::default()).map_err(|r| {
        parse_error(pylon::yaml::Located {
            position: r.position,
            path: r.path,
            message: r.message,
        })
    })?;
    // An owned pool, dropped with the parsed message: pylon-proxy reads Envoy
    // YAML once, and the pool's megabytes are not worth keeping.
    let pool = pylon::decode_descriptor_pool()
        .map_err(|e| invalid(format!("descriptor set: {e} (a build defect)")))?;
    let desc = pool.get_message_by_name(BOOTSTRAP).ok_or_else(|| {
        invalid(format!(
            "{BOOTSTRAP} is missing from the descriptor set (a build defect)"
        ))
    })?;
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(
        serde_yaml::Deserializer::from_str(text),
        &mut track,
    );
    let msg = desc.deserialize(de).map_err(|e| {
        let located = pylon::yaml::locate(serde_path_to_error::Error::new(track.path(), e), &index);
        parse_error(located)
    })?;
    PbBootstrap::decode(msg.encode_to_vec().as_slice())
        .map_err(|e| invalid(format!("does not decode as {BOOTSTRAP}: {e}")))
}

type Check<T> = Result<T, String>;

/// Rejects, by path, every listed field (a local binding of the same name)
/// that is set (differs from its default).
macro_rules! reject_set {
    ($prefix:expr; $($field:ident),+ $(,)?) => {
        $( unset($prefix, stringify!($field), $field)?; )+
    };
}

fn unset<T: Default + PartialEq>(prefix: &str, field: &str, value: &T) -> Check<()> {
    if *value == T::default() {
        Ok(())
    } else {
        Err(format!("field {prefix}{field} is not supported"))
    }
}

fn walk(b: &PbBootstrap) -> Check<Bootstrap> {
    let PbBootstrap {
        node,
        node_context_params,
        static_resources,
        dynamic_resources,
        cluster_manager,
        hds_config,
        flags_path,
        stats_sinks,
        deferred_stat_options,
        stats_config,
        stats_flush_interval,
        watchdog,
        watchdogs,
        tracing,
        layered_runtime,
        admin,
        overload_manager,
        enable_dispatcher_stats,
        header_prefix,
        stats_server_version_override,
        use_tcp_for_dns_lookups,
        dns_resolution_config,
        typed_dns_resolver_config,
        bootstrap_extensions,
        fatal_actions,
        config_sources,
        default_config_source,
        default_socket_interface,
        certificate_provider_instances,
        inline_headers,
        perf_tracing_file_path,
        default_regex_engine,
        xds_delegate_extension,
        xds_config_tracker_extension,
        listener_manager,
        application_log_config,
        grpc_async_client_manager_config,
        memory_allocator_manager,
        enable_worker_cpu_affinity,
        stats_flush,
        stats_eviction,
    } = b;
    reject_set!("";
        node_context_params,
        cluster_manager,
        hds_config,
        flags_path,
        stats_sinks,
        deferred_stat_options,
        stats_config,
        stats_flush_interval,
        watchdog,
        watchdogs,
        tracing,
        layered_runtime,
        overload_manager,
        enable_dispatcher_stats,
        header_prefix,
        stats_server_version_override,
        use_tcp_for_dns_lookups,
        dns_resolution_config,
        typed_dns_resolver_config,
        bootstrap_extensions,
        fatal_actions,
        config_sources,
        default_config_source,
        default_socket_interface,
        certificate_provider_instances,
        inline_headers,
        perf_tracing_file_path,
        default_regex_engine,
        xds_delegate_extension,
        xds_config_tracker_extension,
        listener_manager,
        application_log_config,
        grpc_async_client_manager_config,
        memory_allocator_manager,
        enable_worker_cpu_affinity,
        stats_flush,
        stats_eviction,
    );
    let (node_id, node_cluster) = match node {
        None => (String::new(), String::new()),
        Some(n) => node_fields(n)?,
    };
    let admin = admin.as_ref().map(admin_addr).transpose()?;
    let ads_cluster = dynamic_resources
        .as_ref()
        .and_then(|d| dynamic(d).ok())
        .map(|(name, _)| name);
    let (mut clusters, listeners) = match static_resources {
        None => (Vec::new(), Vec::new()),
        Some(s) => statics(s, ads_cluster.as_deref())?,
    };
    let xds = match dynamic_resources {
        None => None,
        Some(d) => {
            if node_id.is_empty() {
                return Err("node.id is required with dynamic_resources".to_string());
            }
            let (cluster_name, delta) = dynamic(d)?;
            let at = clusters
                .iter()
                .position(|c| c.name == cluster_name)
                .ok_or_else(|| {
                    format!(
                        "dynamic_resources.ads_config: cluster {cluster_name} is not in static_resources.clusters"
                    )
                })?;
            clusters.remove(at);
            let pb = static_resources
                .as_ref()
                .and_then(|s| s.clusters.iter().find(|c| c.name == cluster_name))
                .ok_or_else(|| format!("static_resources.clusters: no cluster {cluster_name}"))?;
            let (endpoints, tls) = xds_cluster(pb)?;
            Some(XdsTarget {
                endpoints,
                delta,
                tls,
            })
        }
    };
    Ok(Bootstrap {
        node_id,
        node_cluster,
        admin,
        xds,
        clusters,
        listeners,
    })
}

/// The xDS cluster: its endpoints (IP addresses for STATIC, host names or
/// addresses for STRICT_DNS; LOGICAL_DNS has exactly one), and its TLS. The
/// rest of the cluster is checked as any static cluster is.
fn xds_cluster(pb: &PbCluster) -> Check<(Vec<XdsEndpoint>, Option<XdsTls>)> {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        ClusterDiscoveryType, DiscoveryType,
    };
    let name = &pb.name;
    let at = format!("static_resources.clusters: the xDS cluster {name}");
    let mut plain = pb.clone();
    let tls = plain
        .transport_socket
        .take()
        .map(|ts| xds_tls(&ts).map_err(|e| format!("{at}: transport_socket: {e}")))
        .transpose()?;
    let (dns, logical) = match plain.cluster_discovery_type {
        None => (false, false),
        Some(ClusterDiscoveryType::Type(t)) => match DiscoveryType::try_from(t) {
            Ok(DiscoveryType::Static) => (false, false),
            Ok(DiscoveryType::StrictDns) => (true, false),
            Ok(DiscoveryType::LogicalDns) => (true, true),
            _ => return Err(format!("{at} must be STATIC, STRICT_DNS or LOGICAL_DNS")),
        },
        Some(ClusterDiscoveryType::ClusterType(_)) => {
            return Err(format!("{at} must be STATIC, STRICT_DNS or LOGICAL_DNS"))
        }
    };
    let addrs = plain
        .load_assignment
        .as_mut()
        .map(socket_addresses)
        .transpose()
        .map_err(|e| format!("{at}: {e}"))?
        .unwrap_or_default();
    if addrs.is_empty() {
        return Err(format!("{at} must have at least one endpoint"));
    }
    if logical && addrs.len() > 1 {
        return Err(format!(
            "{at}: a LOGICAL_DNS cluster has exactly one endpoint (list several replicas in a STATIC or STRICT_DNS cluster)"
        ));
    }
    let mut endpoints = Vec::new();
    for sa in addrs {
        let host = sa.address.clone();
        let port = match sa.port_specifier {
            Some(socket_address::PortSpecifier::PortValue(p)) => {
                u16::try_from(p).map_err(|_| format!("{at}: port {p} is out of range"))?
            }
            _ => return Err(format!("{at}: the endpoint needs a port_value")),
        };
        if dns {
            // The model checks the rest as a STATIC cluster with IP addresses.
            sa.address = "127.0.0.1".to_string();
        } else if host.parse::<std::net::IpAddr>().is_err() {
            return Err(format!(
                "{at}: {host:?} is not an IP address (make the cluster STRICT_DNS or LOGICAL_DNS for a host name)"
            ));
        }
        endpoints.push(XdsEndpoint { host, port });
    }
    if dns {
        plain.cluster_discovery_type = None;
    }
    model::Cluster::try_from(&plain).map_err(|e| format!("{at}: {e}"))?;
    Ok((endpoints, tls))
}

/// The socket addresses of every endpoint of `la`; an endpoint that is not
/// a socket address is an error.
fn socket_addresses(
    la: &mut envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment,
) -> Check<Vec<&mut envoy_types::pb::envoy::config::core::v3::SocketAddress>> {
    use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    la.endpoints
        .iter_mut()
        .flat_map(|l| l.lb_endpoints.iter_mut())
        .map(|e| match &mut e.host_identifier {
            Some(HostIdentifier::Endpoint(ep)) => {
                match ep.address.as_mut().and_then(|a| a.address.as_mut()) {
                    Some(address::Address::SocketAddress(sa)) => Ok(sa),
                    _ => Err("each endpoint must be a socket_address".to_string()),
                }
            }
            _ => Err("each endpoint must be an endpoint with an address".to_string()),
        })
        .collect()
}

/// The `UpstreamTlsContext` of the xDS cluster, files only.
fn xds_tls(ts: &envoy_types::pb::envoy::config::core::v3::TransportSocket) -> Check<XdsTls> {
    use envoy_types::pb::envoy::config::core::v3::{
        data_source::Specifier, transport_socket::ConfigType,
    };
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        common_tls_context::ValidationContextType, UpstreamTlsContext,
    };
    use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
    const TLS: &str =
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
    let Some(ConfigType::TypedConfig(any)) = &ts.config_type else {
        return Err("typed_config is required".to_string());
    };
    if any.type_url != TLS {
        return Err(format!("{} is not supported (only {TLS})", any.type_url));
    }
    let mut ctx = UpstreamTlsContext::decode(any.value.as_slice())
        .map_err(|e| format!("does not decode: {e}"))?;
    let file =
        |ds: Option<&envoy_types::pb::envoy::config::core::v3::DataSource>, what: &str| match ds
            .and_then(|d| d.specifier.as_ref())
        {
            Some(Specifier::Filename(f)) => Ok(std::path::PathBuf::from(f)),
            _ => Err(format!(
                "{what} must be a `filename:` (pylon-proxy reloads it when it changes)"
            )),
        };
    let sni = std::mem::take(&mut ctx.sni);
    let mut common = ctx.common_tls_context.take().unwrap_or_default();
    if ctx != UpstreamTlsContext::default() {
        return Err(
            "only `sni` and `common_tls_context` are supported in the UpstreamTlsContext"
                .to_string(),
        );
    }
    let alpn = std::mem::take(&mut common.alpn_protocols);
    if alpn.iter().any(|p| p != "h2") {
        return Err(format!(
            "alpn_protocols {alpn:?}: only h2 is spoken to the xDS server"
        ));
    }
    let certs = std::mem::take(&mut common.tls_certificates);
    let cert_key = match certs.as_slice() {
        [] => None,
        [c] => {
            let pair = (
                file(
                    c.certificate_chain.as_ref(),
                    "tls_certificates[0].certificate_chain",
                )?,
                file(c.private_key.as_ref(), "tls_certificates[0].private_key")?,
            );
            let mut rest = c.clone();
            rest.certificate_chain = None;
            rest.private_key = None;
            if rest != Default::default() {
                return Err(
                    "tls_certificates[0]: only certificate_chain and private_key are supported"
                        .to_string(),
                );
            }
            Some(pair)
        }
        _ => return Err("tls_certificates: at most one certificate".to_string()),
    };
    let validation = match common.validation_context_type.take() {
        Some(ValidationContextType::ValidationContext(v)) => v,
        _ => {
            return Err("common_tls_context.validation_context (trusted_ca) is required: pylon-proxy does not connect to an unverified server".to_string())
        }
    };
    if common != Default::default() {
        return Err("common_tls_context: only tls_certificates, validation_context and alpn_protocols are supported".to_string());
    }
    let mut v = validation;
    let ca = file(v.trusted_ca.as_ref(), "validation_context.trusted_ca")?;
    v.trusted_ca = None;
    let mut san_name = None;
    for m in std::mem::take(&mut v.match_typed_subject_alt_names) {
        match m.matcher.and_then(|m| m.match_pattern) {
            Some(MatchPattern::Exact(e)) => {
                san_name.get_or_insert(e);
            }
            _ => return Err("validation_context.match_typed_subject_alt_names: only exact matchers are supported".to_string()),
        }
    }
    if v != Default::default() {
        return Err(
            "validation_context: only trusted_ca and match_typed_subject_alt_names are supported"
                .to_string(),
        );
    }
    Ok(XdsTls {
        ca,
        cert_key,
        server_name: (!sni.is_empty()).then_some(sni).or(san_name),
    })
}

fn node_fields(n: &Node) -> Check<(String, String)> {
    let Node {
        id,
        cluster,
        metadata,
        dynamic_parameters,
        locality,
        user_agent_name,
        extensions,
        client_features,
        listening_addresses,
        user_agent_version_type,
    } = n;
    reject_set!("node.";
        metadata,
        dynamic_parameters,
        locality,
        user_agent_name,
        extensions,
        client_features,
        listening_addresses,
        user_agent_version_type,
    );
    Ok((id.clone(), cluster.clone()))
}

fn admin_addr(a: &Admin) -> Check<SocketAddr> {
    let Admin {
        access_log,
        access_log_path,
        // Only used when the CPU profiler is started, which pylon-proxy lacks.
        profile_path: _,
        address,
        socket_options,
        // pylon-proxy has no global connection limit.
        ignore_global_conn_limit: _,
        allow_paths,
    } = a;
    reject_set!("admin."; access_log, socket_options, allow_paths);
    if !access_log_path.is_empty() && access_log_path != "/dev/null" {
        return Err(
            "field admin.access_log_path is not supported (other than /dev/null)".to_string(),
        );
    }
    let Some(Address {
        address: Some(address::Address::SocketAddress(sa)),
    }) = address
    else {
        return Err("admin.address.socket_address is required".to_string());
    };
    let ip = sa.address.parse().map_err(|_| {
        format!(
            "admin.address.socket_address.address {:?} is not an IP address",
            sa.address
        )
    })?;
    let port = match sa.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(p)) => u16::try_from(p)
            .map_err(|_| format!("admin.address.socket_address.port_value {p} is out of range"))?,
        _ => return Err("admin.address.socket_address.port_value is required".to_string()),
    };
    Ok(SocketAddr::new(ip, port))
}

/// Returns the xDS cluster's name and whether ADS is delta.
fn dynamic(d: &DynamicResources) -> Check<(String, bool)> {
    let DynamicResources {
        lds_config,
        lds_resources_locator,
        cds_config,
        cds_resources_locator,
        ads_config,
    } = d;
    reject_set!("dynamic_resources."; lds_resources_locator, cds_resources_locator);
    let Some(ads) = ads_config else {
        return Err("dynamic_resources.ads_config is required".to_string());
    };
    let found = ads_api(ads)?;
    // pylon-proxy always subscribes to both over ADS.
    ads_source("dynamic_resources.cds_config", cds_config)?;
    ads_source("dynamic_resources.lds_config", lds_config)?;
    Ok(found)
}

fn ads_api(a: &ApiConfigSource) -> Check<(String, bool)> {
    let ApiConfigSource {
        api_type,
        transport_api_version,
        cluster_names,
        grpc_services,
        refresh_delay,
        request_timeout,
        rate_limit_settings,
        // Whether the node goes in every request or the first only is an
        // optimisation; servers must accept both. pylon-proxy sends it in the
        // first request of each stream.
        set_node_on_first_message_only: _,
        config_validators,
    } = a;
    let p = "dynamic_resources.ads_config.";
    reject_set!(p; cluster_names, refresh_delay, request_timeout, rate_limit_settings, config_validators);
    let delta = match ApiType::try_from(*api_type) {
        Ok(ApiType::Grpc) => false,
        Ok(ApiType::DeltaGrpc) => true,
        Ok(other) => {
            return Err(format!(
                "{p}api_type {} is not supported",
                other.as_str_name()
            ))
        }
        Err(_) => return Err(format!("{p}api_type {api_type} is not supported")),
    };
    if *transport_api_version != ApiVersion::V3 as i32
        && *transport_api_version != ApiVersion::Auto as i32
    {
        return Err(format!("{p}transport_api_version must be V3"));
    }
    let service = match grpc_services.as_slice() {
        [one] => one,
        _ => {
            return Err(format!(
                "{p}grpc_services: exactly one gRPC service is required"
            ))
        }
    };
    let GrpcService {
        timeout,
        initial_metadata,
        retry_policy,
        target_specifier,
    } = service;
    let p = format!("{p}grpc_services[0].");
    reject_set!(&p; timeout, initial_metadata, retry_policy);
    let envoy = match target_specifier {
        Some(grpc_service::TargetSpecifier::EnvoyGrpc(e)) => e,
        Some(grpc_service::TargetSpecifier::GoogleGrpc(_)) => {
            return Err(format!("field {p}google_grpc is not supported"))
        }
        None => return Err(format!("{p}envoy_grpc is required")),
    };
    let grpc_service::EnvoyGrpc {
        cluster_name,
        authority,
        retry_policy,
        max_receive_message_length,
        skip_envoy_headers,
    } = envoy;
    let p = format!("{p}envoy_grpc.");
    reject_set!(&p; authority, retry_policy, max_receive_message_length, skip_envoy_headers);
    if cluster_name.is_empty() {
        return Err(format!("{p}cluster_name is required"));
    }
    Ok((cluster_name.clone(), delta))
}

fn ads_source(at: &str, cs: &Option<ConfigSource>) -> Check<()> {
    let Some(ConfigSource {
        authorities,
        initial_fetch_timeout,
        resource_api_version,
        config_source_specifier,
    }) = cs
    else {
        return Err(format!(
            "{at} is required (pylon-proxy takes clusters and listeners over ADS)"
        ));
    };
    let p = format!("{at}.");
    reject_set!(&p; authorities, initial_fetch_timeout);
    if *resource_api_version != ApiVersion::V3 as i32
        && *resource_api_version != ApiVersion::Auto as i32
    {
        return Err(format!("{p}resource_api_version must be V3"));
    }
    match config_source_specifier {
        Some(ConfigSourceSpecifier::Ads(_)) => Ok(()),
        _ => Err(format!("{p}ads is required: only ADS is supported")),
    }
}

fn statics(
    s: &StaticResources,
    ads_cluster: Option<&str>,
) -> Check<(Vec<model::Cluster>, Vec<model::Listener>)> {
    let StaticResources {
        listeners,
        clusters,
        secrets,
    } = s;
    reject_set!("static_resources."; secrets);
    let mut names = BTreeSet::new();
    let mut out_clusters = Vec::new();
    for (i, c) in clusters.iter().enumerate() {
        let c = if Some(c.name.as_str()) == ads_cluster {
            // Checked by `xds_cluster`; kept here as a placeholder so that its
            // name is still unique among the clusters.
            model::Cluster::try_from(&PbCluster {
                name: c.name.clone(),
                ..Default::default()
            })
        } else {
            model::Cluster::try_from(c)
        }
        .map_err(|e| format!("static_resources.clusters[{i}]: {e}"))?;
        if !names.insert(c.name.clone()) {
            return Err(format!(
                "static_resources.clusters[{i}]: duplicate cluster name {}",
                c.name
            ));
        }
        out_clusters.push(c);
    }
    let mut names = BTreeSet::new();
    let mut out_listeners = Vec::new();
    for (i, l) in listeners.iter().enumerate() {
        let converted = if l.name.is_empty() {
            // Envoy names an unnamed static listener itself; use its address.
            let mut named = l.clone();
            named.name = listener_default_name(l);
            model::Listener::try_from(&named)
        } else {
            model::Listener::try_from(l)
        };
        let l = converted.map_err(|e| format!("static_resources.listeners[{i}]: {e}"))?;
        if !names.insert(l.name.clone()) {
            return Err(format!(
                "static_resources.listeners[{i}]: duplicate listener name {}",
                l.name
            ));
        }
        out_listeners.push(l);
    }
    Ok((out_clusters, out_listeners))
}

/// `address:port` of a listener's socket address, or `listener` without one.
fn listener_default_name(l: &envoy_types::pb::envoy::config::listener::v3::Listener) -> String {
    match &l.address {
        Some(Address {
            address: Some(address::Address::SocketAddress(sa)),
        }) => match sa.port_specifier {
            Some(socket_address::PortSpecifier::PortValue(p)) => format!("{}:{p}", sa.address),
            _ => sa.address.clone(),
        },
        _ => "listener".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::{
        Discovery, Endpoint, HealthCheck, HealthCheckKind, ListenerKind, LoadAssignment,
        RouteSource, TcpProxy,
    };

    /// Printed by `pylon-xds bootstrap --node-id edge-1` (control_plane::bootstrap::envoy_bootstrap).
    const PYLON_XDS_BOOTSTRAP: &str = r#"# Envoy bootstrap generated by `pylon-xds bootstrap`: everything but the
# connection to pylon-xds arrives over ADS (state of the world).
node:
  id: "edge-1"
  cluster: "pylon"
admin:
  address:
    socket_address: { address: "127.0.0.1", port_value: 9901 }
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services:
      - envoy_grpc: { cluster_name: pylon_xds }
  cds_config: { ads: {}, resource_api_version: V3 }
  lds_config: { ads: {}, resource_api_version: V3 }
static_resources:
  clusters:
    - name: pylon_xds
      type: STATIC
      connect_timeout: 1s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
          explicit_http_config:
            http2_protocol_options:
              connection_keepalive: { interval: 30s, timeout: 5s }
      load_assignment:
        cluster_name: pylon_xds
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address: { address: "127.0.0.1", port_value: 18000 }
"#;

    /// The seed's TCP load balancer for three kube-apiservers (loopback addresses).
    const KUBE_APISERVER: &str = r#"
admin:
  access_log_path: /dev/null
  address:
    socket_address: { address: 127.0.0.1, port_value: 9901 }
static_resources:
  listeners:
  - name: k8s_api_listener
    address:
      socket_address: { address: 127.0.0.1, port_value: 6443 }
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: k8s_api
          cluster: k8s_cluster_01_api_service
  clusters:
  - name: k8s_cluster_01_api_service
    connect_timeout: 5s
    type: STATIC
    lb_policy: ROUND_ROBIN
    health_checks:
    - timeout: 1s
      interval: 10s
      unhealthy_threshold: 3
      healthy_threshold: 2
      tcp_health_check: {}
    load_assignment:
      cluster_name: k8s_cluster_01_api_service
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 16443 } } }
        - endpoint: { address: { socket_address: { address: 127.0.0.2, port_value: 16443 } } }
        - endpoint: { address: { socket_address: { address: 127.0.0.3, port_value: 16443 } } }
"#;

    /// The seed's HTTP front proxy in v3 form, with an inline route_config.
    const FRONT_PROXY: &str = r#"
static_resources:
  listeners:
  - address:
      socket_address: { address: 127.0.0.1, port_value: 8000 }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          codec_type: AUTO
          stat_prefix: ingress_http
          route_config:
            name: local_route
            virtual_hosts:
            - name: backend
              domains: ["*"]
              routes:
              - match: { prefix: /service/1 }
                route: { cluster: service1 }
              - match: { prefix: /service/2 }
                route: { cluster: service2 }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: service1
    connect_timeout: 0.25s
    type: STATIC
    lb_policy: ROUND_ROBIN
    http2_protocol_options: {}
    load_assignment:
      cluster_name: service1
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 8081 } } }
  - name: service2
    connect_timeout: 0.25s
    type: STATIC
    load_assignment:
      cluster_name: service2
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 8084 } } }
admin:
  address:
    socket_address: { address: 127.0.0.1, port_value: 8001 }
"#;

    #[test]
    fn pylon_xds_bootstrap_loads_sotw_and_delta() {
        for delta in [false, true] {
            let text = if delta {
                PYLON_XDS_BOOTSTRAP.replace("api_type: GRPC", "api_type: DELTA_GRPC")
            } else {
                PYLON_XDS_BOOTSTRAP.to_string()
            };
            let b = parse("bootstrap.yaml", &text).unwrap();
            assert_eq!(
                b,
                Bootstrap {
                    node_id: "edge-1".into(),
                    node_cluster: "pylon".into(),
                    admin: Some("127.0.0.1:9901".parse().unwrap()),
                    xds: Some(XdsTarget {
                        endpoints: vec![XdsEndpoint {
                            host: "127.0.0.1".into(),
                            port: 18000,
                        }],
                        delta,
                        tls: None,
                    }),
                    clusters: vec![],
                    listeners: vec![],
                }
            );
        }
    }

    #[test]
    fn seed_kube_apiserver_loads() {
        let b = parse("envoy.yaml", KUBE_APISERVER).unwrap();
        assert_eq!(b.admin, Some("127.0.0.1:9901".parse().unwrap()));
        assert_eq!(b.xds, None);
        assert_eq!(b.node_id, "");
        assert_eq!(b.clusters.len(), 1);
        let c = &b.clusters[0];
        assert_eq!(c.name, "k8s_cluster_01_api_service");
        assert_eq!(c.connect_timeout, Duration::from_secs(5));
        assert_eq!(
            c.discovery,
            Discovery::Static(LoadAssignment {
                name: "k8s_cluster_01_api_service".into(),
                endpoints: ["127.0.0.1:16443", "127.0.0.2:16443", "127.0.0.3:16443"]
                    .iter()
                    .map(|a| Endpoint {
                        addr: a.parse().unwrap(),
                        weight: 1
                    })
                    .collect(),
            })
        );
        assert_eq!(
            c.health_check,
            Some(HealthCheck {
                interval: Duration::from_secs(10),
                timeout: Duration::from_secs(1),
                unhealthy_threshold: 3,
                healthy_threshold: 2,
                no_traffic_interval: Duration::from_secs(60),
                unhealthy_interval: Duration::from_secs(10),
                kind: HealthCheckKind::Tcp,
                tls: None,
            })
        );
        assert_eq!(
            b.listeners,
            vec![model::Listener {
                name: "k8s_api_listener".into(),
                addr: "127.0.0.1:6443".parse().unwrap(),
                kind: ListenerKind::Tcp(TcpProxy {
                    stat_prefix: "k8s_api".into(),
                    cluster: "k8s_cluster_01_api_service".into(),
                    max_connect_attempts: 1,
                    idle_timeout: Some(Duration::from_secs(3600)),
                }),
            }]
        );
    }

    #[test]
    fn seed_front_proxy_loads() {
        let b = parse("front-envoy.yaml", FRONT_PROXY).unwrap();
        assert_eq!(b.admin, Some("127.0.0.1:8001".parse().unwrap()));
        let names: Vec<_> = b.clusters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["service1", "service2"]);
        assert_eq!(b.listeners.len(), 1);
        let l = &b.listeners[0];
        // Unnamed static listener: named after its address.
        assert_eq!(l.name, "127.0.0.1:8000");
        let ListenerKind::Http(hcm) = &l.kind else {
            panic!("not http: {l:?}")
        };
        assert_eq!(hcm.stat_prefix, "ingress_http");
        let RouteSource::Inline(rc) = &hcm.routes else {
            panic!("not inline")
        };
        assert_eq!(rc.name, "local_route");
        assert_eq!(rc.virtual_hosts[0].routes.len(), 2);
    }

    fn err(text: &str) -> String {
        parse("envoy.yaml", text).unwrap_err().to_string()
    }

    /// Printed by `pylon-xds bootstrap --node-id edge-1 --xds
    /// pylon-xds.example:18000 --tls-ca ... --tls-cert ... --tls-key ...`.
    const PYLON_XDS_TLS_BOOTSTRAP: &str = r#"# Envoy bootstrap generated by `pylon-xds bootstrap`: everything but the
# connection to pylon-xds arrives over ADS (state of the world).
node:
  id: "edge-1"
  cluster: "pylon"
admin:
  address:
    socket_address: { address: "127.0.0.1", port_value: 9901 }
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services:
      - envoy_grpc: { cluster_name: pylon_xds }
  cds_config: { ads: {}, resource_api_version: V3 }
  lds_config: { ads: {}, resource_api_version: V3 }
static_resources:
  clusters:
    - name: pylon_xds
      type: STRICT_DNS
      connect_timeout: 1s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
          explicit_http_config:
            http2_protocol_options:
              connection_keepalive: { interval: 30s, timeout: 5s }
      load_assignment:
        cluster_name: pylon_xds
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address: { address: "pylon-xds.example", port_value: 18000 }
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
          sni: "pylon-xds.example"
          common_tls_context:
            alpn_protocols: [h2]
            tls_certificates:
              - certificate_chain: { filename: "/etc/pylon/edge.crt" }
                private_key: { filename: "/etc/pylon/edge.key" }
            validation_context:
              trusted_ca: { filename: "/etc/pylon/ca.crt" }
              match_typed_subject_alt_names:
                - san_type: DNS
                  matcher: { exact: "pylon-xds.example" }
"#;

    #[test]
    fn the_xds_cluster_may_list_several_replicas() {
        let text = PYLON_XDS_BOOTSTRAP.replace(
            "          - lb_endpoints:\n",
            "          - lb_endpoints:\n              - endpoint:\n                  address:\n                    socket_address: { address: \"127.0.0.2\", port_value: 18001 }\n",
        );
        let x = parse("bootstrap.yaml", &text).unwrap().xds.unwrap();
        let targets: Vec<String> = x.endpoints.iter().map(XdsEndpoint::target).collect();
        assert_eq!(targets, ["127.0.0.2:18001", "127.0.0.1:18000"]);
        let logical = PYLON_XDS_TLS_BOOTSTRAP
            .replace("type: STRICT_DNS", "type: LOGICAL_DNS")
            .replace(
                "          - lb_endpoints:\n",
                "          - lb_endpoints:\n              - endpoint:\n                  address:\n                    socket_address: { address: \"b.example\", port_value: 18001 }\n",
            );
        let e = err(&logical);
        assert!(
            e.contains("a LOGICAL_DNS cluster has exactly one endpoint"),
            "{e}"
        );
    }

    #[test]
    fn the_xds_cluster_may_be_a_host_name_over_tls() {
        let b = parse("bootstrap.yaml", PYLON_XDS_TLS_BOOTSTRAP).unwrap();
        let x = b.xds.unwrap();
        assert_eq!(
            x.endpoints,
            [XdsEndpoint {
                host: "pylon-xds.example".into(),
                port: 18000
            }]
        );
        assert_eq!(
            x.tls,
            Some(XdsTls {
                ca: "/etc/pylon/ca.crt".into(),
                cert_key: Some(("/etc/pylon/edge.crt".into(), "/etc/pylon/edge.key".into())),
                server_name: Some("pylon-xds.example".into()),
            })
        );
        assert!(
            b.clusters.is_empty(),
            "the xDS cluster is not a proxied cluster"
        );
        let table = [
            (
                PYLON_XDS_TLS_BOOTSTRAP.replace(
                    "private_key: { filename: \"/etc/pylon/edge.key\" }",
                    "private_key: { inline_string: \"KEY\" }",
                ),
                "tls_certificates[0].private_key must be a `filename:` (pylon-proxy reloads it when it changes)",
            ),
            (
                PYLON_XDS_TLS_BOOTSTRAP.replace("            validation_context:\n              trusted_ca: { filename: \"/etc/pylon/ca.crt\" }\n              match_typed_subject_alt_names:\n                - san_type: DNS\n                  matcher: { exact: \"pylon-xds.example\" }", ""),
                "common_tls_context.validation_context (trusted_ca) is required: pylon-proxy does not connect to an unverified server",
            ),
            (
                PYLON_XDS_TLS_BOOTSTRAP.replace("alpn_protocols: [h2]", "alpn_protocols: [http/1.1]"),
                "alpn_protocols [\"http/1.1\"]: only h2 is spoken to the xDS server",
            ),
            (
                PYLON_XDS_TLS_BOOTSTRAP.replace("type: STRICT_DNS", "type: STATIC"),
                "\"pylon-xds.example\" is not an IP address (make the cluster STRICT_DNS or LOGICAL_DNS for a host name)",
            ),
        ];
        for (text, want) in table {
            let e = err(&text);
            assert!(e.contains(want), "{want}\n{e}");
        }
    }

    #[test]
    fn unsupported_fields_are_named() {
        let table = [
            ("layered_runtime: {layers: [{name: static, static_layer: {}}]}\n", "envoy.yaml: bootstrap: field layered_runtime is not supported"),
            ("stats_sinks: [{name: envoy.stat_sinks.statsd}]\n", "envoy.yaml: bootstrap: field stats_sinks is not supported"),
            ("overload_manager: {refresh_interval: 1s}\n", "envoy.yaml: bootstrap: field overload_manager is not supported"),
            ("tracing: {http: {name: envoy.tracers.zipkin}}\n", "envoy.yaml: bootstrap: field tracing is not supported"),
            ("node: {id: a, metadata: {k: v}}\n", "envoy.yaml: bootstrap: field node.metadata is not supported"),
            ("admin: {access_log_path: /tmp/admin.log, address: {socket_address: {address: 127.0.0.1, port_value: 1}}}\n", "envoy.yaml: bootstrap: field admin.access_log_path is not supported (other than /dev/null)"),
            ("admin: {}\n", "envoy.yaml: bootstrap: admin.address.socket_address is required"),
            ("static_resources: {secrets: [{name: s}]}\n", "envoy.yaml: bootstrap: field static_resources.secrets is not supported"),
            ("static_resources: {clusters: [{name: a, type: STATIC, lb_policy: MAGLEV}]}\n", "envoy.yaml: bootstrap: static_resources.clusters[0]: cluster a: lb_policy MAGLEV is not supported"),
            ("static_resources: {clusters: [{name: a}, {name: a}]}\n", "envoy.yaml: bootstrap: static_resources.clusters[1]: duplicate cluster name a"),
        ];
        for (text, want) in table {
            assert_eq!(err(text), want, "{text}");
        }
    }

    #[test]
    fn dynamic_resources_are_checked() {
        let b = PYLON_XDS_BOOTSTRAP;
        let table = [
            (b.replace("api_type: GRPC", "api_type: REST"), "dynamic_resources.ads_config.api_type REST is not supported"),
            (b.replace("envoy_grpc: { cluster_name: pylon_xds }", "envoy_grpc: { cluster_name: nope }"), "dynamic_resources.ads_config: cluster nope is not in static_resources.clusters"),
            (b.replace("  cds_config: { ads: {}, resource_api_version: V3 }\n", ""), "dynamic_resources.cds_config is required (pylon-proxy takes clusters and listeners over ADS)"),
            (b.replace("lds_config: { ads: {}", "lds_config: { path_config_source: { path: /l.yaml }"), "dynamic_resources.lds_config.ads is required: only ADS is supported"),
            (b.replace("id: \"edge-1\"", "id: \"\""), "node.id is required with dynamic_resources"),
            (b.replace("          - lb_endpoints:\n              - endpoint:\n                  address:\n                    socket_address: { address: \"127.0.0.1\", port_value: 18000 }\n", "          - lb_endpoints: []\n"), "static_resources.clusters: the xDS cluster pylon_xds must have at least one endpoint"),
            (b.replace("          - lb_endpoints:\n", "          - lb_endpoints:\n              - endpoint:\n                  address:\n                    socket_address: { address: \"pylon-xds-2.example\", port_value: 18001 }\n"), "static_resources.clusters: the xDS cluster pylon_xds: \"pylon-xds-2.example\" is not an IP address (make the cluster STRICT_DNS or LOGICAL_DNS for a host name)"),
        ];
        for (text, want) in table {
            assert_eq!(
                err(&text),
                format!("envoy.yaml: bootstrap: {want}"),
                "{text}"
            );
        }
    }

    #[test]
    fn unknown_field_names_carry_line_and_column() {
        // serde_yaml places an unknown field at the start of the enclosing
        // mapping (line 2); the error points at the key itself.
        let e = err("admin:\n  address:\n    socket_address: {address: 127.0.0.1, port_value: 1}\n  bogus_field: 1\n");
        assert_eq!(
            e,
            "envoy.yaml:4:3: admin.bogus_field: unrecognized field name 'bogus_field'"
        );
        // Bounded like pylon-xds's config: no aliases, no deep nesting.
        let e = err("admin: &a {}\nnode: *a\n");
        assert!(e.starts_with("envoy.yaml:1:11: admin: YAML anchors"), "{e}");
        let e = err(&format!("node:\n  {}x\n", "- ".repeat(5_000)));
        assert!(e.contains("nesting deeper than 64 levels"), "{e}");
    }

    #[test]
    fn load_reads_files() {
        let dir = std::env::temp_dir().join(format!("pylon-bootstrap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("envoy.yaml");
        std::fs::write(&path, KUBE_APISERVER).unwrap();
        assert_eq!(load(&path).unwrap().clusters.len(), 1);
        let missing = load(&dir.join("missing.yaml")).unwrap_err().to_string();
        assert!(missing.contains("missing.yaml"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
