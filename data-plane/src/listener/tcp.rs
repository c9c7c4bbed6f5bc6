//! TCP proxy (`envoy.filters.network.tcp_proxy`).
//!
//! Owns one downstream connection's life: pick a host of the cluster, connect
//! with the cluster's `connect_timeout` (up to `max_connect_attempts` hosts:
//! a failed attempt moves on to a host not tried yet while the load balancer
//! has one, at once, as Envoy does without `backoff_options`), then copy
//! bytes both ways with half-close propagation until both sides are
//! done, the connection is idle for `idle_timeout`, or the listener's drain
//! time runs out. Bytes move with `splice(2)` (see `splice`), so they never
//! enter user space, through pipes borrowed only while bytes are in flight,
//! so an idle connection holds two descriptors (its sockets); per chunk, one
//! clock read for the idle timer; stats are added once when the connection
//! ends.
//!
//! Each attempt is reported to the cluster's outlier detection, as Envoy's
//! TCP proxy does: a connection is a success, a refused or failed connect a
//! connect failure, a connect timeout a timeout.
//!
//! No cluster or no host, or the cluster's `max_connections` circuit breaker
//! open: the downstream connection is closed. Established
//! connections are never closed because a host turned unhealthy or the
//! endpoints changed.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::splice::{Moved, Moved64, Splice};
use crate::model::TcpProxy;
use crate::stats::{stats_struct, Counter};
use crate::upstream::outlier::Report;
use crate::upstream::{ClusterSlot, ConnectError};

/// Copy buffer size, each direction.
pub const COPY_BUFFER: usize = 64 * 1024;

stats_struct! {
    /// Envoy's `tcp.<stat_prefix>.` stats.
    pub struct TcpStats {
        downstream_cx_total: Counter => "downstream_cx_total",
        downstream_cx_no_route: Counter => "downstream_cx_no_route",
        downstream_cx_rx_bytes_total: Counter => "downstream_cx_rx_bytes_total",
        downstream_cx_tx_bytes_total: Counter => "downstream_cx_tx_bytes_total",
        idle_timeout: Counter => "idle_timeout",
    }
}

/// Everything the connections of one TCP proxy listener share.
#[derive(Debug)]
pub struct TcpCtx {
    cfg: TcpProxy,
    cluster: Arc<ClusterSlot>,
    stats: Arc<TcpStats>,
}

impl TcpCtx {
    /// A context for `cfg`, with its cluster's slot and its stats.
    pub fn new(cfg: TcpProxy, cluster: Arc<ClusterSlot>, stats: Arc<TcpStats>) -> TcpCtx {
        TcpCtx {
            cfg,
            cluster,
            stats,
        }
    }
}

/// Proxies one downstream connection until it ends or `close` is cancelled.
pub async fn serve(downstream: TcpStream, ctx: Arc<TcpCtx>, close: CancellationToken) {
    let stats = &ctx.stats;
    stats.downstream_cx_total.inc();
    let Some(cluster) = ctx.cluster.get() else {
        stats.downstream_cx_no_route.inc();
        tracing::debug!(cluster = ctx.cluster.name(), "tcp proxy: unknown cluster");
        return;
    };
    let connect = async {
        let attempts = ctx.cfg.max_connect_attempts.max(1) as usize;
        let mut tried = Vec::with_capacity(attempts);
        for _ in 0..attempts {
            // The next host round robin gives, skipping those tried already
            // (the whole host list at most), so that a dead host costs one
            // attempt however connections interleave.
            let repicks = if tried.is_empty() {
                0
            } else {
                cluster.lb().members().hosts().len()
            };
            let host = cluster.pick_avoiding(&tried, repicks)?;
            tried.push(host.addr());
            match cluster.connect(&host).await {
                Ok(up) => {
                    cluster.report(&host, Report::ConnectSuccessFinal);
                    return Some(up);
                }
                // `max_connections` reached (counted in upstream_cx_overflow):
                // the downstream connection is closed, as in Envoy.
                Err(ConnectError::Overflow) => return None,
                Err(e) => {
                    cluster.report(
                        &host,
                        match e {
                            ConnectError::Timeout => Report::Timeout,
                            _ => Report::ConnectFailed,
                        },
                    );
                    tracing::debug!(host = %host.addr(), error = %e, "tcp proxy: connect failed")
                }
            }
        }
        None
    };
    let upstream = tokio::select! {
        up = connect => up,
        _ = close.cancelled() => None,
    };
    let Some((upstream, cx)) = upstream else {
        return;
    };
    let _ = downstream.set_nodelay(true);

    let base = Instant::now();
    let last = AtomicU64::new(0);
    let moved = Moved64::default();
    let copy = relay(downstream, upstream, &last, base, &moved);
    let idle = async {
        match ctx.cfg.idle_timeout {
            Some(t) if !t.is_zero() => idle_watch(&last, base, t).await,
            _ => std::future::pending().await,
        }
    };
    tokio::select! {
        r = copy => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "tcp proxy: connection error");
            }
        }
        _ = idle => stats.idle_timeout.inc(),
        _ = close.cancelled() => {}
    }
    let Moved {
        a_to_b: from_downstream,
        b_to_a: from_upstream,
    } = moved.get();
    stats.downstream_cx_rx_bytes_total.add(from_downstream);
    stats.downstream_cx_tx_bytes_total.add(from_upstream);
    cx.stats().upstream_cx_rx_bytes_total.add(from_upstream);
    cx.stats().upstream_cx_tx_bytes_total.add(from_downstream);
}

/// Moves bytes both ways: with `splice(2)` (no copy through user space) when
/// the system allows, else with a user-space copy of [`COPY_BUFFER`] per
/// direction.
async fn relay(
    down: TcpStream,
    up: TcpStream,
    last: &AtomicU64,
    base: Instant,
    moved: &Moved64,
) -> io::Result<()> {
    match Splice::new() {
        Ok(splice) => splice.relay(&down, &up, last, base, moved).await,
        Err(e) => {
            tracing::debug!(error = %e, "tcp proxy: splice unavailable; copying in user space");
            let mut d = Tracked::new(down, last, base, &moved.a_to_b);
            let mut u = Tracked::new(up, last, base, &moved.b_to_a);
            tokio::io::copy_bidirectional_with_sizes(&mut d, &mut u, COPY_BUFFER, COPY_BUFFER)
                .await
                .map(|_| ())
        }
    }
}

/// Returns once nothing was read for `idle` (the last read time is kept in
/// `last`, in milliseconds since `base`).
async fn idle_watch(last: &AtomicU64, base: Instant, idle: Duration) {
    loop {
        let deadline = base + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// A stream that records when it last read something and how much it read.
struct Tracked<'a, S> {
    inner: S,
    last: &'a AtomicU64,
    base: Instant,
    read_bytes: &'a AtomicU64,
}

impl<'a, S> Tracked<'a, S> {
    fn new(inner: S, last: &'a AtomicU64, base: Instant, read_bytes: &'a AtomicU64) -> Self {
        Tracked {
            inner,
            last,
            base,
            read_bytes,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read_bytes.fetch_add(n as u64, Ordering::Relaxed);
            let ms = self.base.elapsed().as_millis() as u64;
            self.last.store(ms, Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
