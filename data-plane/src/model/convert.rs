//! Envoy v3 protos (envoy-types) -> the validated model: the two-phase decode.
//!
//! Phase one, [`decode`]: the bytes of an `Any` must decode as the message
//! its type URL names; if they do not, the whole xDS response is NACKed.
//! Phase two, `TryFrom<&proto>` for [`Cluster`](super::Cluster),
//! [`LoadAssignment`](super::LoadAssignment), [`Listener`](super::Listener)
//! and [`RouteConfig`](super::RouteConfig): the resource is checked against
//! what pylon-proxy honours, and a failure is a [`NackError`] naming the
//! resource and the field (`cluster x: lb_policy MAGLEV is not supported`).
//!
//! Every proto struct is destructured in full, without `..`, so a field added
//! by a new envoy-types release fails to compile here instead of being ignored
//! silently. Each field is either converted, rejected when set (not equal to
//! its default: `"<field path> is not supported"`), or deliberately ignored
//! (`field: _`). Ignored fields are the ones that change nothing pylon-proxy
//! does: observability only (stat names, stats matchers, metadata, access-log
//! free tracing decorations), or settings that only apply to features that are
//! rejected anyway (DNS settings of a non-DNS cluster). Each is commented where
//! it is ignored.
//!
//! This module owns the mapping and its defaults; it does not know about xDS
//! streams, versions or which resources reference which.

// Deprecated proto fields must be named to destructure in full (and rejected
// when set), which the `deprecated` lint would flag.
#![allow(deprecated)]

mod cluster;
mod dns;
mod endpoint;
mod listener;
mod retry;
mod route;
mod tls;

#[cfg(test)]
mod tests;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as PbCluster;
use envoy_types::pb::envoy::config::core::v3::{
    address, config_source::ConfigSourceSpecifier, socket_address, Address, ApiVersion,
    ConfigSource, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment as PbLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener as PbListener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration as PbRouteConfig;
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use prost::Message;
use pylon::ResourceType;

use super::{Cluster, Listener, LoadAssignment, NackError, RouteConfig};

/// A decoded and validated xDS resource.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// CDS.
    Cluster(Cluster),
    /// EDS.
    LoadAssignment(LoadAssignment),
    /// LDS.
    Listener(Listener),
    /// RDS.
    RouteConfig(RouteConfig),
}

impl Decoded {
    /// The resource's name (for a load assignment, its `cluster_name`).
    pub fn name(&self) -> &str {
        match self {
            Decoded::Cluster(c) => &c.name,
            Decoded::LoadAssignment(l) => &l.name,
            Decoded::Listener(l) => &l.name,
            Decoded::RouteConfig(r) => &r.name,
        }
    }

    /// The xDS type the resource came as.
    pub fn resource_type(&self) -> ResourceType {
        match self {
            Decoded::Cluster(_) => ResourceType::Cluster,
            Decoded::LoadAssignment(_) => ResourceType::Endpoint,
            Decoded::Listener(_) => ResourceType::Listener,
            Decoded::RouteConfig(_) => ResourceType::Route,
        }
    }
}

/// Decodes one xDS resource (the `type_url` and `value` of its `Any`) and
/// validates it.
///
/// A type pylon-proxy does not consume, or bytes that do not decode, give a
/// `NackError` of no type ("resource") named after the type URL; a resource that
/// decodes but cannot be honoured gives one naming the resource and field.
///
/// `Ok(None)` is a resource to leave out without rejecting it: an
/// `api_listener` Listener, which is for proxyless gRPC clients sharing the
/// config (Envoy, too, skips those that arrive over LDS).
pub fn decode(type_url: &str, bytes: &[u8]) -> Result<Option<Decoded>, NackError> {
    fn undecodable(type_url: &str, e: prost::DecodeError) -> NackError {
        NackError {
            kind: None,
            name: type_url.to_string(),
            message: format!("does not decode: {e}"),
        }
    }
    let Some(ty) = ResourceType::from_type_url(type_url) else {
        return Err(NackError {
            kind: None,
            name: type_url.to_string(),
            message: "this resource type is not supported".to_string(),
        });
    };
    let decoded = match ty {
        ResourceType::Cluster => {
            let pb = PbCluster::decode(bytes).map_err(|e| undecodable(type_url, e))?;
            Cluster::try_from(&pb).map(Decoded::Cluster)
        }
        ResourceType::Endpoint => {
            let pb = PbLoadAssignment::decode(bytes).map_err(|e| undecodable(type_url, e))?;
            LoadAssignment::try_from(&pb).map(Decoded::LoadAssignment)
        }
        ResourceType::Listener => {
            let pb = PbListener::decode(bytes).map_err(|e| undecodable(type_url, e))?;
            if pb.api_listener.is_some() {
                return Ok(None);
            }
            Listener::try_from(&pb).map(Decoded::Listener)
        }
        ResourceType::Route => {
            let pb = PbRouteConfig::decode(bytes).map_err(|e| undecodable(type_url, e))?;
            RouteConfig::try_from(&pb).map(Decoded::RouteConfig)
        }
    };
    decoded.map(Some)
}

/// A check inside one resource: `Err` is the message of the [`NackError`],
/// naming the field by its path (`health_checks[0].alt_port is not supported`).
type Check<T> = Result<T, String>;

/// Rejects a field that is set: `value` differs from its type's default
/// (`None`, empty, `false`, `0`). `p` is the path prefix (`""` or ending in
/// `.`), `field` the proto field name.
fn unset<T: Default + PartialEq>(p: &str, field: &str, value: &T) -> Check<()> {
    if *value == T::default() {
        Ok(())
    } else {
        Err(format!("{p}{field} is not supported"))
    }
}

/// Like [`unset`], but a message present with all its fields at their
/// defaults (`http2_protocol_options: {}`) is accepted too: for option blocks
/// where an empty message means Envoy's defaults.
fn unset_or_empty<T: Default + PartialEq>(p: &str, field: &str, value: &Option<T>) -> Check<()> {
    match value {
        Some(v) if *v != T::default() => Err(format!("{p}{field} is not supported")),
        _ => Ok(()),
    }
}

/// Rejects, by name, every listed field (a local binding of the same name)
/// that is set.
macro_rules! reject_set {
    ($p:expr; $($field:ident),+ $(,)?) => {
        $( $crate::model::convert::unset($p, stringify!($field), $field)?; )+
    };
}
use reject_set;

/// A protobuf `Duration` as a std `Duration`; negative or malformed values
/// are rejected.
fn duration(p: &str, field: &str, d: &Option<PbDuration>) -> Check<Option<Duration>> {
    let Some(PbDuration { seconds, nanos }) = d else {
        return Ok(None);
    };
    match (u64::try_from(*seconds), u32::try_from(*nanos)) {
        (Ok(s), Ok(n)) if n < 1_000_000_000 => Ok(Some(Duration::new(s, n))),
        _ => Err(format!("{p}{field} must be a non-negative duration")),
    }
}

/// A required, strictly positive duration.
fn positive_duration(p: &str, field: &str, d: &Option<PbDuration>) -> Check<Duration> {
    match duration(p, field, d)? {
        None => Err(format!("{p}{field} is required")),
        Some(d) if d.is_zero() => Err(format!("{p}{field} must be greater than 0")),
        Some(d) => Ok(d),
    }
}

/// An optional duration that, when set, must be strictly positive.
fn optional_positive_duration(
    p: &str,
    field: &str,
    d: &Option<PbDuration>,
) -> Check<Option<Duration>> {
    match duration(p, field, d)? {
        Some(d) if d.is_zero() => Err(format!("{p}{field} must be greater than 0")),
        other => Ok(other),
    }
}

/// A timeout where 0 disables it: unset -> `default`, 0 -> `None`.
fn timeout_or_disabled(
    p: &str,
    field: &str,
    d: &Option<PbDuration>,
    default: Duration,
) -> Check<Option<Duration>> {
    Ok(match duration(p, field, d)? {
        None => Some(default),
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
    })
}

/// An `Address` that must be a TCP socket address with an IP literal and a
/// numeric port (`p` + `field` name it in messages).
fn socket_addr(p: &str, field: &str, a: &Option<Address>) -> Check<SocketAddr> {
    let at = format!("{p}{field}");
    let Some(Address { address }) = a else {
        return Err(format!("{at} is required"));
    };
    let sa = match address {
        None => return Err(format!("{at} is required")),
        Some(address::Address::SocketAddress(sa)) => sa,
        Some(address::Address::Pipe(_)) => return Err(format!("{at}.pipe is not supported")),
        Some(address::Address::EnvoyInternalAddress(_)) => {
            return Err(format!("{at}.envoy_internal_address is not supported"))
        }
    };
    let SocketAddress {
        protocol,
        address,
        resolver_name,
        ipv4_compat,
        network_namespace_filepath,
        port_specifier,
    } = sa;
    let p = format!("{at}.socket_address.");
    if *protocol != socket_address::Protocol::Tcp as i32 {
        return Err(format!(
            "{p}protocol {} is not supported",
            enum_name(*protocol, |v| {
                socket_address::Protocol::try_from(v)
                    .ok()
                    .map(|x| x.as_str_name())
            })
        ));
    }
    reject_set!(&p; resolver_name, ipv4_compat, network_namespace_filepath);
    let ip: IpAddr = address.parse().map_err(|_| {
        format!("{p}address {address:?} is not an IP address (DNS names are not supported)")
    })?;
    let port = match port_specifier {
        None => return Err(format!("{p}port_value is required")),
        Some(socket_address::PortSpecifier::NamedPort(_)) => {
            return Err(format!("{p}named_port is not supported"))
        }
        Some(socket_address::PortSpecifier::PortValue(port)) => {
            u16::try_from(*port).map_err(|_| format!("{p}port_value {port} is out of range"))?
        }
    };
    Ok(SocketAddr::new(ip, port))
}

/// Checks that a `ConfigSource` means "over the ADS stream": `ads: {}` (or
/// `self: {}`, which is the same stream under ADS).
fn ads_source(p: &str, field: &str, cs: &Option<ConfigSource>) -> Check<()> {
    let Some(cs) = cs else {
        return Err(format!("{p}{field} is required"));
    };
    let ConfigSource {
        authorities,
        initial_fetch_timeout,
        resource_api_version,
        config_source_specifier,
    } = cs;
    let p = format!("{p}{field}.");
    reject_set!(&p; authorities, initial_fetch_timeout);
    if *resource_api_version != ApiVersion::Auto as i32
        && *resource_api_version != ApiVersion::V3 as i32
    {
        return Err(format!("{p}resource_api_version must be V3"));
    }
    match config_source_specifier {
        Some(ConfigSourceSpecifier::Ads(_)) | Some(ConfigSourceSpecifier::Self_(_)) => Ok(()),
        _ => Err(format!("{p}ads is required: only ADS is supported")),
    }
}

/// The upper-case proto name of an enum value, or the number.
fn enum_name(v: i32, name: impl Fn(i32) -> Option<&'static str>) -> String {
    name(v).map_or_else(|| v.to_string(), str::to_string)
}

/// Requires a non-empty name.
fn required_name(name: &str) -> Check<()> {
    if name.is_empty() {
        Err("name is required".to_string())
    } else {
        Ok(())
    }
}
