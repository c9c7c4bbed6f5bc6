//! Free loopback ports for addresses that must be written into a config before
//! anything listens on them (Envoy listeners declared in pylon-xds YAML).
//!
//! Owns only the "bind port 0, read, drop" trick. In-process servers bind port
//! 0 themselves and never need this. There is a small window in which another
//! process could take the port; tests accept it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};

/// The default loopback address used by the harness.
pub const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A TCP port on `127.0.0.1` that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(free_addr(LOOPBACK)?.port())
}

/// An address on `ip` (which must be loopback) whose port was free a moment ago.
pub fn free_addr(ip: IpAddr) -> anyhow::Result<SocketAddr> {
    anyhow::ensure!(ip.is_loopback(), "{ip} is not a loopback address");
    let listener = TcpListener::bind(SocketAddr::new(ip, 0))?;
    Ok(listener.local_addr()?)
}

/// `127.0.0.N`, for giving each backend its own loopback address.
pub fn loopback(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_loopback_and_bindable() {
        let addr = free_addr(loopback(3)).unwrap();
        assert_eq!(addr.ip(), loopback(3));
        assert_ne!(addr.port(), 0);
        TcpListener::bind(addr).unwrap();
        assert!(free_addr("10.0.0.1".parse().unwrap()).is_err());
    }
}
