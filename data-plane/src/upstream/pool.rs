//! Upstream HTTP/1.1 exchanges with connection reuse per host.
//!
//! Owns: each host's stack of idle connections ([`Pool`], most recently used
//! first), the request exchange ([`send`]: reuse an idle connection, else
//! connect with the cluster's `connect_timeout`), the request body as sent
//! upstream ([`RequestBody`], which notes each chunk in the request's
//! [`Activity`] for the downstream stream idle timer), and the response body
//! ([`UpstreamBody`]) that gives its connection back to the pool once the
//! response is complete, and the cluster's request circuit breakers
//! (`max_pending_requests`, `max_requests`; see [`send`]). A request that
//! hyper reports as not sent (the idle connection was closed under us) is
//! sent again on another connection of the same host; retrying on another
//! host is the router's decision, under the route's retry policy
//! (`listener::retry`), and so is reporting the outcome to outlier detection.
//!
//! Does not own routing, timeouts or downstream connections (see `listener::http`).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::upstream::cluster::Cluster;
use crate::upstream::connect::ConnectError;
use crate::upstream::host::Host;
use crate::upstream::replay::{BoxError, ReplayBody};
use crate::upstream::stats::ClusterStats;

/// Idle connections kept per host at most.
pub const MAX_IDLE_PER_HOST: usize = 1024;

/// A host's idle upstream connections, and the requests waiting for one.
#[derive(Debug, Default)]
pub struct Pool {
    idle: Mutex<Vec<SendRequest<RequestBody>>>,
    /// Requests of this host waiting for a connection (pending).
    waiting: AtomicUsize,
    /// Wakes one waiting request when a connection goes back to the pool or
    /// a connection closes (a place under `max_connections` may be free).
    available: Notify,
}

impl Pool {
    fn take(&self) -> Option<SendRequest<RequestBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(s) = idle.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    fn put(&self, s: SendRequest<RequestBody>) {
        if s.is_closed() {
            return;
        }
        {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() < MAX_IDLE_PER_HOST {
                idle.push(s);
            }
        }
        self.wake_one();
    }

    /// Wakes one pending request, if any waits: a connection became idle or
    /// one closed. (A waker with nobody waiting costs one atomic load.)
    pub(crate) fn wake_one(&self) {
        if self.waiting.load(Ordering::Acquire) > 0 {
            self.available.notify_one();
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
    /// A circuit breaker is open: `max_pending_requests` or `max_requests`
    /// (counted in `upstream_rq_pending_overflow`).
    #[error("upstream connect error or disconnect/reset before headers. reset reason: overflow")]
    Overflow,
}

impl From<ConnectError> for UpstreamError {
    fn from(e: ConnectError) -> Self {
        match e {
            ConnectError::Timeout => UpstreamError::ConnectTimeout,
            ConnectError::Io(e) => UpstreamError::Connect(e),
            ConnectError::Overflow => UpstreamError::Overflow,
        }
    }
}

/// One request in flight to a host: holds `rq_active` of the host and the
/// cluster (the place `max_requests` counts), and counts `rq_total` on both
/// when created.
#[derive(Debug)]
pub struct ActiveRq {
    host: Arc<Host>,
    stats: Arc<ClusterStats>,
}

impl ActiveRq {
    /// Starts counting a request to `host` of a cluster with `stats`, if the
    /// cluster has fewer than `max_requests` in flight.
    fn try_new(host: &Arc<Host>, stats: &Arc<ClusterStats>, max_requests: u32) -> Option<ActiveRq> {
        if !stats.upstream_rq_active.try_inc(u64::from(max_requests)) {
            return None;
        }
        stats.upstream_rq_total.inc();
        host.stats.rq_total.inc();
        host.stats.rq_active.inc();
        Some(ActiveRq {
            host: host.clone(),
            stats: stats.clone(),
        })
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

/// A request waiting for a connection (Envoy's pending request): holds
/// `upstream_rq_pending_active` and the host's count of waiters.
struct Pending<'a> {
    stats: &'a ClusterStats,
    host: &'a Host,
}

impl<'a> Pending<'a> {
    /// Takes a place under `max_pending_requests`, or `None`.
    fn try_new(stats: &'a ClusterStats, host: &'a Host, max: u32) -> Option<Pending<'a>> {
        if !stats.upstream_rq_pending_active.try_inc(u64::from(max)) {
            return None;
        }
        stats.upstream_rq_pending_total.inc();
        host.pool.waiting.fetch_add(1, Ordering::AcqRel);
        Some(Pending { stats, host })
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.stats.upstream_rq_pending_active.dec();
        self.host.pool.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response and what it came over.
#[derive(Debug)]
pub struct Exchange {
    /// The response (headers; the body streams).
    pub response: Response<Incoming>,
    /// Its connection, for [`UpstreamBody`] to give back.
    pub sender: SendRequest<RequestBody>,
    /// The request's share of the stats, for [`UpstreamBody`] to hold.
    pub rq: ActiveRq,
}

/// Sends `req` (origin-form URI, HTTP/1.1) to `host` of `cluster` within the
/// cluster's circuit breakers, as Envoy's HTTP/1 connection pool does:
/// - an idle connection is used at once;
/// - otherwise the request is pending (at most `max_pending_requests` of
///   them, beyond which it fails with [`UpstreamError::Overflow`], counted in
///   `upstream_rq_pending_overflow`) while a connection is opened, if
///   `max_connections` allows (else counted once in `upstream_cx_overflow`),
///   or until a connection of the host is freed;
/// - a request is sent only while fewer than `max_requests` are in flight
///   (else it overflows too).
///
/// A request that hyper reports as not sent (the idle connection was closed
/// under us) is retried on another connection. Nothing here waits on a lock:
/// the limits are atomic counters, and a pending request sleeps on its
/// host's [`Notify`].
pub async fn send(
    cluster: &Cluster,
    host: &Arc<Host>,
    mut req: Request<RequestBody>,
) -> Result<Exchange, UpstreamError> {
    let stats = cluster.stats();
    let limits = cluster.config().circuit_breakers;
    let overflow = || {
        stats.upstream_rq_pending_overflow.inc();
        UpstreamError::Overflow
    };
    let mut pending: Option<Pending<'_>> = None;
    let mut rq: Option<ActiveRq> = None;
    let mut counted_cx_overflow = false;
    loop {
        let notified = host.pool.available.notified();
        tokio::pin!(notified);
        if pending.is_some() {
            // Registered before looking, so a wake between the look and the
            // wait is not lost.
            notified.as_mut().enable();
        }
        while let Some(mut sender) = host.pool.take() {
            if sender.ready().await.is_err() {
                continue;
            }
            pending = None;
            if rq.is_none() {
                rq = ActiveRq::try_new(host, stats, limits.max_requests);
            }
            let Some(active) = rq.take() else {
                host.pool.put(sender);
                return Err(overflow());
            };
            match sender.try_send_request(req).await {
                Ok(response) => {
                    return Ok(Exchange {
                        response,
                        sender,
                        rq: active,
                    })
                }
                Err(mut e) => match e.take_message() {
                    // Not written: the connection went away while idle; try another.
                    Some(r) => {
                        req = r;
                        rq = Some(active);
                    }
                    None => return Err(UpstreamError::Reset(e.into_error())),
                },
            }
        }
        if pending.is_none() {
            // Waiting for a connection, be it one being opened: pending, as in Envoy.
            pending = Some(
                Pending::try_new(stats, host, limits.max_pending_requests).ok_or_else(overflow)?,
            );
            continue;
        }
        if let Some(cx) = cluster.reserve_cx(host, true) {
            let (stream, cx) = cluster.connect_reserved(cx).await?;
            drop(pending.take());
            let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
                // One flattened `write(2)` per request head (see the server side).
                .writev(false)
                .handshake(TokioIo::new(stream))
                .await
                .map_err(UpstreamError::Reset)?;
            tokio::spawn(async move {
                // `cx` holds the connection's place until it ends.
                let _cx = cx;
                let _ = conn.await;
            });
            let Some(active) = rq
                .take()
                .or_else(|| ActiveRq::try_new(host, stats, limits.max_requests))
            else {
                host.pool.put(sender);
                return Err(overflow());
            };
            return match sender.send_request(req).await {
                Ok(response) => Ok(Exchange {
                    response,
                    sender,
                    rq: active,
                }),
                Err(e) => Err(UpstreamError::Reset(e)),
            };
        }
        if !counted_cx_overflow {
            stats.upstream_cx_overflow.inc();
            counted_cx_overflow = true;
        }
        notified.await;
    }
}

/// When a request last moved bytes, in either direction, and whether its
/// body has been read in full: what the downstream stream idle timer needs.
/// Shared by the request body (which travels into the upstream connection's
/// task) and the downstream response.
#[derive(Debug)]
pub struct Activity {
    base: Instant,
    /// Milliseconds since `base`.
    last_ms: AtomicU64,
    request_done: AtomicBool,
}

impl Activity {
    /// Activity of a request starting now; `request_done` when it has no body.
    pub fn new(request_done: bool) -> Arc<Activity> {
        Arc::new(Activity {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
            request_done: AtomicBool::new(request_done),
        })
    }

    /// Notes that bytes moved now.
    #[inline]
    pub fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// When bytes last moved (the request's start if they never did).
    pub fn last(&self) -> Instant {
        self.base + std::time::Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// Whether the downstream request was received in full.
    pub fn request_done(&self) -> bool {
        self.request_done.load(Ordering::Relaxed)
    }
}

/// Where a request body comes from.
#[derive(Debug)]
enum Source {
    /// Straight from the client (no retries).
    Direct(Incoming),
    /// An attempt's reading of a body kept for retries.
    Replay(ReplayBody),
}

/// The downstream request body on its way upstream: every chunk counts as
/// activity of the request, and its end marks the request as received.
#[derive(Debug)]
pub struct RequestBody {
    inner: Source,
    activity: Arc<Activity>,
}

impl RequestBody {
    /// Wraps the body of a request whose activity is `activity`.
    pub fn new(inner: Incoming, activity: Arc<Activity>) -> RequestBody {
        RequestBody {
            inner: Source::Direct(inner),
            activity,
        }
    }

    /// One attempt's reading of a body kept for retries.
    pub fn replay(inner: ReplayBody, activity: Arc<Activity>) -> RequestBody {
        RequestBody {
            inner: Source::Replay(inner),
            activity,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = match &mut self.inner {
            Source::Direct(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
            Source::Replay(b) => Pin::new(b).poll_frame(cx),
        };
        match &r {
            Poll::Ready(Some(Ok(_))) => {
                self.activity.touch();
                if self.is_end_stream() {
                    self.activity.request_done.store(true, Ordering::Relaxed);
                }
            }
            Poll::Ready(None) => self.activity.request_done.store(true, Ordering::Relaxed),
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Source::Direct(b) => b.is_end_stream(),
            Source::Replay(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Source::Direct(b) => b.size_hint(),
            Source::Replay(b) => b.size_hint(),
        }
    }
}

/// An upstream response body: when it ends, its connection goes back to the
/// host's pool; dropped before its end, the connection is closed (HTTP/1 cannot
/// abandon a response otherwise).
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Incoming,
    sender: Option<SendRequest<RequestBody>>,
    rq: ActiveRq,
}

impl UpstreamBody {
    /// Wraps a response body of `rq` sent over `sender`.
    pub fn new(inner: Incoming, sender: SendRequest<RequestBody>, rq: ActiveRq) -> UpstreamBody {
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
