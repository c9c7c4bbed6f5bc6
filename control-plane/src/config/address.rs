//! Socket addresses as the concise form writes them: `"127.0.0.1:6443"` or
//! `"[::1]:6443"`.
//!
//! This file owns parsing and the conversion to Envoy's `SocketAddress`.
//! Listener addresses are IP literals. An endpoint may also be a host name
//! with a port ([`Target`]): EDS carries IP addresses, so pylon-xds resolves
//! the name itself (`crate::dns`) and serves its addresses.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address, Address as ProtoAddress, SocketAddress,
};
use serde::de::{self, Deserialize, Deserializer, Visitor};

/// An IP address and a port in 1..=65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Address {
    pub ip: IpAddr,
    pub port: u16,
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            IpAddr::V4(ip) => write!(f, "{ip}:{}", self.port),
            IpAddr::V6(ip) => write!(f, "[{ip}]:{}", self.port),
        }
    }
}

impl Address {
    /// Envoy's `Address { socket_address { address, port_value } }` (TCP).
    pub fn to_proto(self) -> ProtoAddress {
        ProtoAddress {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: ip_text(self.ip),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                    self.port,
                ))),
                ..Default::default()
            })),
        }
    }
}

/// `ip` as text, as `Display` writes it. IPv4 is written by hand: a reload
/// writes every endpoint's address, and the formatting machinery was a
/// measurable part of that.
fn ip_text(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut text = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
    text
}

/// Parses `ipv4:port` or `[ipv6]:port`.
pub fn parse(text: &str) -> Result<Address, String> {
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!(
            "address `{text}` has no port: write \"ip:port\", like \"127.0.0.1:8080\""
        ));
    };
    let ip = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| format!("`{v6}` in address `{text}` is not an IPv6 address"))?
    } else if let Ok(v4) = host.parse::<Ipv4Addr>() {
        IpAddr::V4(v4)
    } else if host.parse::<Ipv6Addr>().is_ok() {
        return Err(format!(
            "IPv6 address `{text}` needs brackets: write \"[{host}]:{port}\""
        ));
    } else {
        return Err(format!(
            "`{host}` in address `{text}` is not an IP address; a listener binds an IP address \
             (host names are for endpoints)"
        ));
    };
    let port = parse_port(text, port)?;
    Ok(Address { ip, port })
}

/// A host name and a port: an endpoint pylon-xds resolves.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    /// The name, lower-case, without a trailing dot.
    pub host: String,
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Where an endpoint is: an IP address, or a host name to resolve.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Ip(Address),
    Name(HostPort),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Ip(a) => a.fmt(f),
            Target::Name(n) => n.fmt(f),
        }
    }
}

/// Whether `host` is a DNS host name: dot-separated labels of letters,
/// digits and `-` (not at either end), at most 63 bytes each and 253 in all.
/// A name of digits and dots only is a malformed IPv4 address, not a name.
pub fn is_host_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && !host.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// Parses an endpoint: `ipv4:port`, `[ipv6]:port` or `host.name:port`.
pub fn parse_target(text: &str) -> Result<Target, String> {
    match parse(text) {
        Ok(a) => Ok(Target::Ip(a)),
        Err(e) => {
            let Some((host, port)) = text.rsplit_once(':') else {
                return Err(e.replace("\"ip:port\"", "\"ip:port\" or \"host:port\""));
            };
            if host.contains(':') || host.starts_with('[') || host.parse::<Ipv4Addr>().is_ok() {
                // IPv6 spelling, or a bad port: the address error says it.
                return Err(e);
            }
            if !is_host_name(host) {
                return Err(format!(
                    "`{host}` in address `{text}` is neither an IP address nor a host name"
                ));
            }
            let port = parse_port(text, port)?;
            let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
            Ok(Target::Name(HostPort { host, port }))
        }
    }
}

fn parse_port(text: &str, port: &str) -> Result<u16, String> {
    match port.parse::<u32>() {
        Ok(port @ 1..=65535) => Ok(u16::try_from(port).unwrap_or(u16::MAX)),
        Ok(port) => Err(format!(
            "port {port} in address `{text}` is out of range 1..=65535"
        )),
        Err(_) => Err(format!(
            "port `{port}` in address `{text}` is not a number in 1..=65535"
        )),
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TargetVisitor)
    }
}

struct TargetVisitor;

impl<'de> Visitor<'de> for TargetVisitor {
    type Value = Target;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an address \"ip:port\" or \"host:port\", like \"127.0.0.1:8080\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Target, E> {
        parse_target(v).map_err(E::custom)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Target, A::Error> {
        Err(de::Error::custom(UNQUOTED_IPV6))
    }
}

/// `- [::1]:80` is a YAML list holding `::1`, followed by `:80`: say so.
pub const UNQUOTED_IPV6: &str =
    "found a list where an address was expected; quote IPv6 addresses: '[::1]:8080'";

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(AddressVisitor)
    }
}

struct AddressVisitor;

impl<'de> Visitor<'de> for AddressVisitor {
    type Value = Address;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an address \"ip:port\", like \"127.0.0.1:8080\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Address, E> {
        parse(v).map_err(E::custom)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Address, A::Error> {
        Err(de::Error::custom(UNQUOTED_IPV6))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_ipv4_as_display_does() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "10.168.100.255",
            "1.100.9.99",
            "255.255.255.255",
        ] {
            let v4: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(v4), v4.to_string());
        }
        let v6: IpAddr = "::1".parse().unwrap();
        assert_eq!(ip_text(v6), "::1");
    }

    #[test]
    fn parses_ip_literals() {
        let a = parse("127.0.0.1:6443").unwrap();
        assert_eq!(a.to_string(), "127.0.0.1:6443");
        let a = parse("[::1]:8080").unwrap();
        assert_eq!(a.ip, IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(a.to_string(), "[::1]:8080");
        let proto = parse("127.0.0.2:1").unwrap().to_proto();
        let Some(address::Address::SocketAddress(sa)) = proto.address else {
            panic!("not a socket address")
        };
        assert_eq!(sa.address, "127.0.0.2");
        assert_eq!(
            sa.port_specifier,
            Some(socket_address::PortSpecifier::PortValue(1))
        );
    }

    #[test]
    fn rejects_bad_addresses() {
        let table = [
            ("127.0.0.1", "address `127.0.0.1` has no port: write \"ip:port\", like \"127.0.0.1:8080\""),
            ("localhost:80", "`localhost` in address `localhost:80` is not an IP address; a listener binds an IP address (host names are for endpoints)"),
            ("127.0.0.1:0", "port 0 in address `127.0.0.1:0` is out of range 1..=65535"),
            ("127.0.0.1:65536", "port 65536 in address `127.0.0.1:65536` is out of range 1..=65535"),
            ("127.0.0.1:http", "port `http` in address `127.0.0.1:http` is not a number in 1..=65535"),
            ("::1:80", "IPv6 address `::1:80` needs brackets: write \"[::1]:80\""),
            ("[::x]:80", "`::x` in address `[::x]:80` is not an IPv6 address"),
        ];
        for (text, message) in table {
            assert_eq!(parse(text), Err(message.to_string()), "{text}");
        }
    }

    #[test]
    fn endpoints_take_host_names() {
        assert_eq!(
            parse_target("apiserver.example:6443"),
            Ok(Target::Name(HostPort {
                host: "apiserver.example".into(),
                port: 6443
            }))
        );
        assert_eq!(
            parse_target("API.Example.:443").unwrap().to_string(),
            "api.example:443"
        );
        assert_eq!(
            parse_target("127.0.0.1:80").unwrap().to_string(),
            "127.0.0.1:80"
        );
        let table = [
            ("api.example", "address `api.example` has no port: write \"ip:port\" or \"host:port\", like \"127.0.0.1:8080\""),
            ("api.example:0", "port 0 in address `api.example:0` is out of range 1..=65535"),
            ("api_x.example:80", "`api_x.example` in address `api_x.example:80` is neither an IP address nor a host name"),
            ("-a.example:80", "`-a.example` in address `-a.example:80` is neither an IP address nor a host name"),
            ("10.0.0.300:80", "`10.0.0.300` in address `10.0.0.300:80` is neither an IP address nor a host name"),
            ("127.0.0.1:http", "port `http` in address `127.0.0.1:http` is not a number in 1..=65535"),
            ("::1:80", "IPv6 address `::1:80` needs brackets: write \"[::1]:80\""),
        ];
        for (text, message) in table {
            assert_eq!(parse_target(text), Err(message.to_string()), "{text}");
        }
    }
}
