//! Socket addresses as the concise form writes them: `"127.0.0.1:6443"` or
//! `"[::1]:6443"`.
//!
//! This file owns parsing and the conversion to Envoy's `SocketAddress`.
//! Hostnames are rejected: endpoints are served over EDS, and EDS carries IP
//! addresses, not names to resolve.

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
                address: self.ip.to_string(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                    self.port,
                ))),
                ..Default::default()
            })),
        }
    }
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
            "`{host}` in address `{text}` is not an IP address; hostnames are not supported \
             (endpoints are served over EDS, which carries IP addresses)"
        ));
    };
    let port = match port.parse::<u32>() {
        Ok(port @ 1..=65535) => u16::try_from(port).unwrap_or(u16::MAX),
        Ok(port) => {
            return Err(format!(
                "port {port} in address `{text}` is out of range 1..=65535"
            ))
        }
        Err(_) => {
            return Err(format!(
                "port `{port}` in address `{text}` is not a number in 1..=65535"
            ))
        }
    };
    Ok(Address { ip, port })
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
            ("localhost:80", "`localhost` in address `localhost:80` is not an IP address; hostnames are not supported (endpoints are served over EDS, which carries IP addresses)"),
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
}
