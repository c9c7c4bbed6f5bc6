//! Free loopback ports for addresses that must be written into a config before
//! anything listens on them (Envoy listeners declared in pylon-xds YAML).
//!
//! Owns the choice of those ports. They are taken from below the kernel's
//! ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`), never from it:
//! a port handed out by "bind port 0" is an ephemeral port, and every outgoing
//! connection made by any process on the machine (Envoy's own health checks,
//! a client, another test) may take it as its source port in the moment
//! between our check and Envoy's bind. CI saw exactly that ("cannot bind
//! '127.0.0.1:44687': Address already in use"). Below the range only an
//! explicit bind can take a port, so each process starts at its own offset
//! (from its pid) and walks a shared counter, checking that each port binds.
//! In-process servers bind port 0 themselves and never need this.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// The default loopback address used by the harness.
pub const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The lowest port handed out: above the well-known and common service ports.
const FLOOR: u16 = 12_000;

/// A TCP port on `127.0.0.1` that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(free_addr(LOOPBACK)?.port())
}

/// An address on `ip` (which must be loopback) whose port was free a moment
/// ago and lies outside the ephemeral range.
pub fn free_addr(ip: IpAddr) -> anyhow::Result<SocketAddr> {
    anyhow::ensure!(ip.is_loopback(), "{ip} is not a loopback address");
    let (low, high) = band();
    let span = u32::from(high - low);
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static START: OnceLock<u32> = OnceLock::new();
    // Spread processes apart so that two test binaries rarely probe the same
    // port at the same moment; the bind check settles the rest.
    let start = *START.get_or_init(|| std::process::id().wrapping_mul(2_654_435_761) % span);
    for _ in 0..span {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = low + ((start + step) % span) as u16;
        let addr = SocketAddr::new(ip, port);
        if TcpListener::bind(addr).is_ok() {
            return Ok(addr);
        }
    }
    // Every port below the ephemeral range is taken: fall back to the kernel.
    let listener = TcpListener::bind(SocketAddr::new(ip, 0))?;
    Ok(listener.local_addr()?)
}

/// `[low, high)`: the ports this module hands out.
fn band() -> (u16, u16) {
    static BAND: OnceLock<(u16, u16)> = OnceLock::new();
    *BAND.get_or_init(|| {
        let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
            .unwrap_or(32_768);
        if ephemeral_low > FLOOR + 2_000 {
            (FLOOR, ephemeral_low)
        } else {
            // An unusual machine whose ephemeral range starts low: use the
            // space above it instead (the range's end is rarely 65535).
            (61_000, 65_000)
        }
    })
}

/// `127.0.0.N`, for giving each backend its own loopback address.
pub fn loopback(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_loopback_bindable_and_not_ephemeral() {
        let addr = free_addr(loopback(3)).unwrap();
        assert_eq!(addr.ip(), loopback(3));
        assert_ne!(addr.port(), 0);
        TcpListener::bind(addr).unwrap();
        let (low, high) = band();
        assert!(
            (low..high).contains(&addr.port()),
            "{addr} outside {low}..{high}"
        );
        let a = free_port().unwrap();
        let b = free_port().unwrap();
        assert_ne!(a, b, "two calls in a row hand out distinct ports");
        assert!(free_addr("10.0.0.1".parse().unwrap()).is_err());
    }
}
