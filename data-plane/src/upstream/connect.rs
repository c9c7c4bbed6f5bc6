//! Opening connections to hosts within a cluster's `max_connections`.
//!
//! Owns [`UpstreamCx`], a connection's place under the circuit breaker (it
//! holds `cx_active` of the host and the cluster from its reservation,
//! before connecting, until dropped), the reservation ([`reserve`]: checked
//! and taken in one atomic step, no lock) and the connect itself ([`open`],
//! within the cluster's `connect_timeout`, with its stats). Used by the TCP
//! proxy (through `Cluster::connect`) and the HTTP pools.
//!
//! Does not own what runs over the connection.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::upstream::host::Host;
use crate::upstream::stats::ClusterStats;

/// Why an upstream TCP connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Not connected within the cluster's `connect_timeout`.
    #[error("connection timeout")]
    Timeout,
    /// The connect failed.
    #[error("connection failure: {0}")]
    Io(#[from] std::io::Error),
    /// The cluster's `max_connections` circuit breaker is open.
    #[error("connection overflow")]
    Overflow,
}

/// An upstream connection's place among the cluster's connections (its
/// `max_connections` circuit breaker): holds `cx_active` of the host and the
/// cluster from its reservation, before connecting, until dropped.
#[derive(Debug)]
pub struct UpstreamCx {
    host: Arc<Host>,
    stats: Arc<ClusterStats>,
}

impl UpstreamCx {
    /// The host connected to.
    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// The cluster's stats.
    pub fn stats(&self) -> &Arc<ClusterStats> {
        &self.stats
    }
}

impl Drop for UpstreamCx {
    fn drop(&mut self) {
        self.host.stats.cx_active.dec();
        self.stats.upstream_cx_active.dec();
    }
}

/// A place for one more connection to `host` within `max_connections`
/// (counted on the cluster's `upstream_cx_active`), or `None` (the caller
/// counts the overflow). `at_least_one`: a host with no connection gets one
/// even beyond the limit, as Envoy's HTTP connection pools do, so requests
/// queued for it are not stranded by other hosts' connections.
pub fn reserve(
    stats: &Arc<ClusterStats>,
    max_connections: u32,
    host: &Arc<Host>,
    at_least_one: bool,
) -> Option<UpstreamCx> {
    let cx = &stats.upstream_cx_active;
    if !cx.try_inc(u64::from(max_connections)) {
        if !(at_least_one && host.stats.cx_active.get() == 0) {
            return None;
        }
        cx.inc();
    }
    host.stats.cx_active.inc();
    Some(UpstreamCx {
        host: host.clone(),
        stats: stats.clone(),
    })
}

/// Opens the connection `cx` reserved, within `timeout`, with `TCP_NODELAY`,
/// counting it in the host's and the cluster's stats; a failure gives the
/// place back.
pub async fn open(
    cx: UpstreamCx,
    timeout: Duration,
) -> Result<(TcpStream, UpstreamCx), ConnectError> {
    let (host, stats) = (&cx.host, &cx.stats);
    stats.upstream_cx_total.inc();
    host.stats.cx_total.inc();
    match tokio::time::timeout(timeout, TcpStream::connect(host.addr())).await {
        Ok(Ok(s)) => {
            // Nagle only delays proxied writes.
            let _ = s.set_nodelay(true);
            Ok((s, cx))
        }
        Ok(Err(e)) => {
            stats.upstream_cx_connect_fail.inc();
            host.stats.cx_connect_fail.inc();
            Err(ConnectError::Io(e))
        }
        Err(_) => {
            stats.upstream_cx_connect_fail.inc();
            stats.upstream_cx_connect_timeout.inc();
            host.stats.cx_connect_fail.inc();
            Err(ConnectError::Timeout)
        }
    }
}
