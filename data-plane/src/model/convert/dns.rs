//! A STRICT_DNS or LOGICAL_DNS cluster's names and DNS settings ->
//! [`DnsDiscovery`].
//!
//! The resolver comes from, in Envoy's order of precedence,
//! `typed_dns_resolver_config` (c-ares, or getaddrinfo meaning the system's
//! resolver), else `dns_resolution_config`, else `dns_resolvers` with
//! `use_tcp_for_dns_lookups`; with none of them, the system's. The c-ares
//! settings that shape lookups (timeout, tries, TCP, search domains) are
//! honoured; those that only tune c-ares's own sockets are ignored (each is
//! commented); anything else is refused by name.
//!
//! This file owns the mapping and Envoy's DNS defaults; resolving is
//! `upstream::dns`'s.

use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{DnsLookupFamily, RefreshRate};
use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address, Address, DnsResolutionConfig, DnsResolverOptions, SocketAddress,
    TypedExtensionConfig,
};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::extensions::network::dns_resolver::cares::v3::CaresDnsResolverConfig;
use envoy_types::pb::envoy::extensions::network::dns_resolver::getaddrinfo::v3::GetAddrInfoDnsResolverConfig;
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use prost::Message;

use super::endpoint::endpoints_with;
use super::{duration, enum_name, reject_set, socket_addr, Check};
use crate::model::{DnsDiscovery, DnsTarget, LookupFamily};

/// Envoy's default `dns_refresh_rate`.
pub const DEFAULT_REFRESH_RATE: Duration = Duration::from_secs(5);
/// Envoy's default c-ares `query_timeout_seconds`.
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Envoy's default c-ares `query_tries`.
pub const DEFAULT_QUERY_TRIES: u32 = 4;

const CARES: &str =
    "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig";
const GETADDRINFO: &str =
    "type.googleapis.com/envoy.extensions.network.dns_resolver.getaddrinfo.v3.GetAddrInfoDnsResolverConfig";

/// The DNS fields of a `Cluster`, borrowed from its destructuring.
pub(super) struct DnsFields<'a> {
    pub refresh_rate: &'a Option<PbDuration>,
    pub jitter: &'a Option<PbDuration>,
    pub failure_refresh_rate: &'a Option<RefreshRate>,
    pub respect_ttl: bool,
    pub lookup_family: i32,
    pub resolvers: &'a [Address],
    pub use_tcp: bool,
    pub resolution_config: &'a Option<DnsResolutionConfig>,
    pub typed_resolver: &'a Option<TypedExtensionConfig>,
}

/// The discovery of a DNS cluster: `logical` for LOGICAL_DNS.
pub(super) fn dns_discovery(
    logical: bool,
    load_assignment: &Option<ClusterLoadAssignment>,
    f: DnsFields<'_>,
) -> Check<DnsDiscovery> {
    let targets: Vec<DnsTarget> = match load_assignment {
        None => Vec::new(),
        Some(la) => endpoints_with("load_assignment.", la, host_port)?
            .into_iter()
            .map(|((host, port), weight)| DnsTarget { host, port, weight })
            .collect(),
    };
    if logical && targets.len() != 1 {
        // Envoy's own words for it.
        return Err(
            "LOGICAL_DNS clusters must have a single locality_lb_endpoint and a single lb_endpoint"
                .to_string(),
        );
    }
    let refresh_rate =
        at_least_1ms("dns_refresh_rate", f.refresh_rate)?.unwrap_or(DEFAULT_REFRESH_RATE);
    let failure_refresh = match f.failure_refresh_rate {
        None => None,
        Some(RefreshRate {
            base_interval,
            max_interval,
        }) => {
            let p = "dns_failure_refresh_rate.";
            let base = at_least_1ms(&format!("{p}base_interval"), base_interval)?
                .ok_or_else(|| format!("{p}base_interval is required"))?;
            let max = at_least_1ms(&format!("{p}max_interval"), max_interval)?.unwrap_or(base * 10);
            if max < base {
                return Err(format!("{p}max_interval must be at least base_interval"));
            }
            Some((base, max))
        }
    };
    let jitter = duration("", "dns_jitter", f.jitter)?.filter(|d| !d.is_zero());
    let lookup_family = match DnsLookupFamily::try_from(f.lookup_family) {
        Ok(DnsLookupFamily::Auto) => LookupFamily::Auto,
        Ok(DnsLookupFamily::V4Only) => LookupFamily::V4Only,
        Ok(DnsLookupFamily::V6Only) => LookupFamily::V6Only,
        Ok(DnsLookupFamily::V4Preferred) => LookupFamily::V4Preferred,
        Ok(DnsLookupFamily::All) => LookupFamily::All,
        Err(_) => {
            return Err(format!(
                "dns_lookup_family {} is not supported",
                enum_name(f.lookup_family, |_| None)
            ))
        }
    };
    let resolver = resolver(&f)?;
    Ok(DnsDiscovery {
        logical,
        targets,
        refresh_rate,
        failure_refresh,
        respect_ttl: f.respect_ttl,
        jitter,
        lookup_family,
        resolvers: resolver.servers,
        use_tcp: resolver.use_tcp,
        no_default_search_domain: resolver.no_default_search_domain,
        query_timeout: resolver.query_timeout,
        query_tries: resolver.query_tries,
    })
}

/// A duration that, when set, is at least 1 ms (Envoy's bound for DNS rates).
fn at_least_1ms(field: &str, d: &Option<PbDuration>) -> Check<Option<Duration>> {
    match duration("", field, d)? {
        Some(d) if d < Duration::from_millis(1) => Err(format!("{field} must be at least 1ms")),
        other => Ok(other),
    }
}

/// A DNS cluster's endpoint address: a host name (or IP literal) and a port.
fn host_port(p: &str, field: &str, a: &Option<Address>) -> Check<(String, u16)> {
    let at = format!("{p}{field}");
    let Some(Address {
        address: Some(address::Address::SocketAddress(sa)),
    }) = a
    else {
        return Err(format!("{at}.socket_address is required"));
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
        return Err(format!("{p}protocol must be TCP"));
    }
    reject_set!(&p; resolver_name, ipv4_compat, network_namespace_filepath);
    if address.is_empty() {
        return Err(format!("{p}address is required"));
    }
    let port = match port_specifier {
        Some(socket_address::PortSpecifier::PortValue(port)) => {
            u16::try_from(*port).map_err(|_| format!("{p}port_value {port} is out of range"))?
        }
        Some(socket_address::PortSpecifier::NamedPort(_)) => {
            return Err(format!("{p}named_port is not supported"))
        }
        None => return Err(format!("{p}port_value is required")),
    };
    Ok((address.clone(), port))
}

/// Which servers to ask, and how.
struct Resolver {
    servers: Vec<SocketAddr>,
    use_tcp: bool,
    no_default_search_domain: bool,
    query_timeout: Duration,
    query_tries: u32,
}

fn resolver(f: &DnsFields<'_>) -> Check<Resolver> {
    let mut r = Resolver {
        servers: Vec::new(),
        use_tcp: false,
        no_default_search_domain: false,
        query_timeout: DEFAULT_QUERY_TIMEOUT,
        query_tries: DEFAULT_QUERY_TRIES,
    };
    if let Some(typed) = f.typed_resolver {
        typed_resolver(typed, &mut r)?;
    } else if let Some(DnsResolutionConfig {
        resolvers,
        dns_resolver_options,
    }) = f.resolution_config
    {
        r.servers = servers("dns_resolution_config.", resolvers)?;
        options(&mut r, dns_resolver_options);
    } else {
        r.servers = servers("", f.resolvers)?;
        r.use_tcp = f.use_tcp;
    }
    Ok(r)
}

fn servers(p: &str, list: &[Address]) -> Check<Vec<SocketAddr>> {
    list.iter()
        .enumerate()
        .map(|(i, a)| socket_addr(p, &format!("resolvers[{i}]"), &Some(a.clone())))
        .collect()
}

fn options(r: &mut Resolver, o: &Option<DnsResolverOptions>) {
    if let Some(DnsResolverOptions {
        use_tcp_for_dns_lookups,
        no_default_search_domain,
    }) = o
    {
        r.use_tcp = *use_tcp_for_dns_lookups;
        r.no_default_search_domain = *no_default_search_domain;
    }
}

fn typed_resolver(t: &TypedExtensionConfig, r: &mut Resolver) -> Check<()> {
    let TypedExtensionConfig {
        // The extension is chosen by the type of `typed_config`.
        name: _,
        typed_config,
    } = t;
    let p = "typed_dns_resolver_config.typed_config.";
    let Some(any) = typed_config else {
        return Err("typed_dns_resolver_config.typed_config is required".to_string());
    };
    match any.type_url.as_str() {
        CARES => {
            let c = CaresDnsResolverConfig::decode(any.value.as_slice())
                .map_err(|e| format!("{p}does not decode: {e}"))?;
            cares(p, &c, r)
        }
        GETADDRINFO => {
            // getaddrinfo is the system's resolver; its thread and retry
            // counts tune Envoy's own resolver threads.
            GetAddrInfoDnsResolverConfig::decode(any.value.as_slice())
                .map_err(|e| format!("{p}does not decode: {e}"))?;
            Ok(())
        }
        other => Err(format!(
            "{p}{other} is not supported (c-ares or getaddrinfo)"
        )),
    }
}

fn cares(p: &str, c: &CaresDnsResolverConfig, r: &mut Resolver) -> Check<()> {
    let CaresDnsResolverConfig {
        resolvers,
        use_resolvers_as_fallback,
        filter_unroutable_families,
        dns_resolver_options,
        // Caps the queries one UDP socket sends before c-ares opens another:
        // a detail of c-ares's sockets that changes no answer.
        udp_max_queries: _,
        query_timeout_seconds,
        query_tries,
        rotate_nameservers,
        // The EDNS0 buffer size only changes how large an answer may be
        // before the server truncates it and the lookup goes over TCP.
        edns0_max_payload_size: _,
        // When c-ares recreates its sockets: no effect on answers.
        max_udp_channel_duration: _,
        reinit_channel_on_timeout: _,
        qcache_max_ttl,
    } = c;
    reject_set!(p;
        use_resolvers_as_fallback,
        filter_unroutable_families,
        rotate_nameservers,
    );
    if qcache_max_ttl.as_ref().is_some_and(|t| t.value != 0) {
        return Err(format!(
            "{p}qcache_max_ttl is not supported (pylon-proxy keeps no DNS cache)"
        ));
    }
    r.servers = servers(p, resolvers)?;
    options(r, dns_resolver_options);
    if let Some(t) = query_timeout_seconds {
        if t.value == 0 {
            return Err(format!("{p}query_timeout_seconds must be at least 1"));
        }
        r.query_timeout = Duration::from_secs(t.value);
    }
    if let Some(t) = query_tries {
        if t.value == 0 {
            return Err(format!("{p}query_tries must be at least 1"));
        }
        r.query_tries = t.value;
    }
    Ok(())
}
