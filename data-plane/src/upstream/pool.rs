//! Upstream HTTP/1.1 exchanges with connection reuse per host.
//!
//! Owns: each host's stack of idle connections ([`Pool`], most recently used
//! first), the request exchange ([`send`]: reuse an idle connection, else
//! connect with the cluster's `connect_timeout`), and the response body
//! ([`UpstreamBody`]) that gives its connection back to the pool once the
//! response is complete. A request that hyper reports as not sent (the idle
//! connection was closed under us) is retried on another connection; nothing
//! else is retried (Envoy: no retries without a retry policy).
//!
//! Does not own routing, timeouts or downstream connections (see `listener::http`).

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use crate::upstream::cluster::{Cluster, ClusterStats};
use crate::upstream::host::Host;
use crate::upstream::ConnectError;

/// Idle connections kept per host at most.
pub const MAX_IDLE_PER_HOST: usize = 1024;

/// A host's idle upstream connections.
#[derive(Debug, Default)]
pub struct Pool {
    idle: Mutex<Vec<SendRequest<Incoming>>>,
}

impl Pool {
    fn take(&self) -> Option<SendRequest<Incoming>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(s) = idle.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    fn put(&self, s: SendRequest<Incoming>) {
        if s.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE_PER_HOST {
            idle.push(s);
        }
    }

    /// Number of idle connections (for tests and admin).
    pub fn idle_len(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Why an upstream exchange failed before response headers. The display
/// strings are Envoy's local-reply bodies.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Connecting failed.
    #[error("upstream connect error or disconnect/reset before headers. reset reason: connection failure")]
    Connect(#[source] std::io::Error),
    /// Connecting took longer than `connect_timeout`.
    #[error("upstream connect error or disconnect/reset before headers. reset reason: connection timeout")]
    ConnectTimeout,
    /// The connection broke before response headers.
    #[error("upstream connect error or disconnect/reset before headers. reset reason: connection termination")]
    Reset(#[source] hyper::Error),
}

impl From<ConnectError> for UpstreamError {
    fn from(e: ConnectError) -> Self {
        match e {
            ConnectError::Timeout => UpstreamError::ConnectTimeout,
            ConnectError::Io(e) => UpstreamError::Connect(e),
        }
    }
}

/// One request in flight to a host: holds `rq_active` of the host and the
/// cluster, and counts `rq_total` on both when created.
#[derive(Debug)]
pub struct ActiveRq {
    host: Arc<Host>,
    stats: Arc<ClusterStats>,
}

impl ActiveRq {
    /// Starts counting a request to `host` of a cluster with `stats`.
    pub fn new(host: Arc<Host>, stats: Arc<ClusterStats>) -> ActiveRq {
        host.stats.rq_total.inc();
        host.stats.rq_active.inc();
        stats.upstream_rq_total.inc();
        stats.upstream_rq_active.inc();
        ActiveRq { host, stats }
    }

    /// The host.
    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// The cluster's stats.
    pub fn stats(&self) -> &Arc<ClusterStats> {
        &self.stats
    }
}

impl Drop for ActiveRq {
    fn drop(&mut self) {
        self.host.stats.rq_active.dec();
        self.stats.upstream_rq_active.dec();
    }
}

/// Sends `req` (origin-form URI, HTTP/1.1) to the request's host, on an idle
/// connection when there is one. Returns the response and its connection,
/// which the caller hands to [`UpstreamBody`].
pub async fn send(
    cluster: &Cluster,
    rq: &ActiveRq,
    mut req: Request<Incoming>,
) -> Result<(Response<Incoming>, SendRequest<Incoming>), UpstreamError> {
    let host = rq.host();
    while let Some(mut sender) = host.pool.take() {
        if sender.ready().await.is_err() {
            continue;
        }
        match sender.try_send_request(req).await {
            Ok(resp) => return Ok((resp, sender)),
            Err(mut e) => match e.take_message() {
                // Not written: the connection went away while idle; try another.
                Some(r) => req = r,
                None => return Err(UpstreamError::Reset(e.into_error())),
            },
        }
    }
    let (stream, cx) = cluster.connect(host).await?;
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        // One flattened `write(2)` per request head (see the server side).
        .writev(false)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(UpstreamError::Reset)?;
    tokio::spawn(async move {
        // `cx` holds cx_active until the connection ends.
        let _cx = cx;
        let _ = conn.await;
    });
    match sender.send_request(req).await {
        Ok(resp) => Ok((resp, sender)),
        Err(e) => Err(UpstreamError::Reset(e)),
    }
}

/// An upstream response body: when it ends, its connection goes back to the
/// host's pool; dropped before its end, the connection is closed (HTTP/1 cannot
/// abandon a response otherwise).
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Incoming,
    sender: Option<SendRequest<Incoming>>,
    rq: ActiveRq,
}

impl UpstreamBody {
    /// Wraps a response body of `rq` sent over `sender`.
    pub fn new(inner: Incoming, sender: SendRequest<Incoming>, rq: ActiveRq) -> UpstreamBody {
        UpstreamBody {
            inner,
            sender: Some(sender),
            rq,
        }
    }

    fn release(&mut self) {
        if let Some(s) = self.sender.take() {
            self.rq.host.pool.put(s);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Err(_))) => this.sender = None,
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}
