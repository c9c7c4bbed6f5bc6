//! HTTP connection manager and router (`envoy.filters.network.http_connection_manager`
//! with `envoy.filters.http.router`).
//!
//! Owns: serving one downstream connection (HTTP/1.1 with keep-alive, or h2c,
//! through hyper's auto server), the per-request path (route lookup in the
//! current route table, host pick, path rewrite, upstream exchange under the
//! route timeout), Envoy's local replies (404 no route, 503 no cluster / no
//! healthy upstream / connect failure / circuit breaker overflow, 504
//! timeout) and the `http.<stat_prefix>.` stats.
//!
//! The route table is read on every request (from the RDS slot, or the inline
//! table), so an RDS update applies to the next request of an existing
//! connection. Draining: a draining listener asks each connection to finish
//! (HTTP/1: close after the current response; h2: GOAWAY).
//!
//! Does not own upstream connections (see `upstream::pool`) or routing tables
//! (see `listener::route`).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;

use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::listener::route::{RouteSlot, RouteTable};
use crate::runtime::stats::{stats_struct, Counter, Gauge, GaugeGuard};
use crate::upstream::pool::{self, Exchange, UpstreamBody, UpstreamError};

stats_struct! {
    /// Envoy's `http.<stat_prefix>.` stats.
    pub struct HttpStats {
        downstream_cx_total: Counter => "downstream_cx_total",
        downstream_cx_active: Gauge => "downstream_cx_active",
        downstream_rq_total: Counter => "downstream_rq_total",
        downstream_rq_active: Gauge => "downstream_rq_active",
        downstream_rq_http1_total: Counter => "downstream_rq_http1_total",
        downstream_rq_http2_total: Counter => "downstream_rq_http2_total",
        downstream_rq_1xx: Counter => "downstream_rq_1xx",
        downstream_rq_2xx: Counter => "downstream_rq_2xx",
        downstream_rq_3xx: Counter => "downstream_rq_3xx",
        downstream_rq_4xx: Counter => "downstream_rq_4xx",
        downstream_rq_5xx: Counter => "downstream_rq_5xx",
        no_route: Counter => "no_route",
        no_cluster: Counter => "no_cluster",
    }
}

impl HttpStats {
    #[inline]
    fn count_status(&self, status: u16) {
        match status / 100 {
            1 => self.downstream_rq_1xx.inc(),
            2 => self.downstream_rq_2xx.inc(),
            3 => self.downstream_rq_3xx.inc(),
            4 => self.downstream_rq_4xx.inc(),
            _ => self.downstream_rq_5xx.inc(),
        }
    }
}

/// Where an HTTP listener's routes come from.
#[derive(Debug)]
pub enum Routes {
    /// RDS: the current version, read per request.
    Rds(Arc<RouteSlot>),
    /// Inline, fixed for the listener's life.
    Inline(Arc<RouteTable>),
}

/// Everything the connections of one HTTP listener share.
#[derive(Debug)]
pub struct HttpCtx {
    stats: Arc<HttpStats>,
    routes: Routes,
    server: auto::Builder<TokioExecutor>,
}

impl HttpCtx {
    /// A context for a listener with these stats and routes.
    pub fn new(stats: Arc<HttpStats>, routes: Routes) -> HttpCtx {
        let mut server = auto::Builder::new(TokioExecutor::new());
        // One flattened `write(2)` per response instead of `writev(2)`: the
        // kernel's iovec import costs more than copying a small body into the
        // head buffer, which is the common case for a proxy.
        server.http1().keep_alive(true).writev(false);
        HttpCtx {
            stats,
            routes,
            server,
        }
    }
}

/// Serves one downstream connection until it ends, `drain` asks it to finish,
/// or `close` ends it.
pub async fn serve(
    stream: TcpStream,
    ctx: Arc<HttpCtx>,
    drain: CancellationToken,
    close: CancellationToken,
) {
    ctx.stats.downstream_cx_total.inc();
    let _active = GaugeGuard::new(ctx.stats.clone(), |s: &HttpStats| &s.downstream_cx_active);
    let svc_ctx = ctx.clone();
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let ctx = svc_ctx.clone();
        async move { Ok::<_, Infallible>(handle(&ctx, req).await) }
    });
    let conn = ctx.server.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    // A connection taken from the backlog of a listener that is already
    // draining is served (until `close`) rather than shut before its request.
    let late = drain.is_cancelled();
    let mut signals = Signals::new(&drain, &close, !late);
    let drained = std::future::poll_fn(|cx| {
        if conn.as_mut().poll(cx).is_ready() {
            return Poll::Ready(false);
        }
        signals.poll_signal(cx).map(|s| s == Signal::Drain)
    })
    .await;
    if !drained {
        return;
    }
    conn.as_mut().graceful_shutdown();
    std::future::poll_fn(|cx| {
        if conn.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        signals.poll_signal(cx).map(|_| ())
    })
    .await;
}

/// What ended or changed a connection from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Drain,
    Close,
}

/// Notes that a shutdown signal (rather than the connection's socket) woke
/// the connection task, then wakes the task.
#[derive(Debug)]
struct SignalWaker {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl Wake for SignalWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// A connection's `drain` and `close` signals, polled only when one of them
/// woke the task: a connection task wakes a few times per request, and
/// polling two cancellation futures each time costs more than the rest of
/// the connection bookkeeping.
struct Signals<'a> {
    drain: Pin<Box<WaitForCancellationFuture<'a>>>,
    close: Pin<Box<WaitForCancellationFuture<'a>>>,
    drain_armed: bool,
    shared: Arc<SignalWaker>,
    waker: Waker,
}

impl<'a> Signals<'a> {
    fn new(drain: &'a CancellationToken, close: &'a CancellationToken, drain_armed: bool) -> Self {
        let shared = Arc::new(SignalWaker {
            // Set so that the first poll registers with both tokens.
            fired: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Signals {
            drain: Box::pin(drain.cancelled()),
            close: Box::pin(close.cancelled()),
            drain_armed,
            waker: Waker::from(shared.clone()),
            shared,
        }
    }

    /// `Close`, or `Drain` once (while armed); pending otherwise.
    fn poll_signal(&mut self, cx: &mut Context<'_>) -> Poll<Signal> {
        self.shared.task.register(cx.waker());
        if !self.shared.fired.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let mut scx = Context::from_waker(&self.waker);
        if self.close.as_mut().poll(&mut scx).is_ready() {
            return Poll::Ready(Signal::Close);
        }
        if self.drain_armed && self.drain.as_mut().poll(&mut scx).is_ready() {
            self.drain_armed = false;
            return Poll::Ready(Signal::Drain);
        }
        Poll::Pending
    }
}

/// Headers that describe one connection and are not forwarded.
const HOP_BY_HOP: [HeaderName; 5] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Request headers not forwarded upstream: the hop-by-hop ones, `expect`, and
/// `te` (last; only when it is not `te: trailers`).
const REQUEST_STRIPPED: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::EXPECT,
    header::TE,
];

/// Which of `names` (at most 8) `h` holds, as a bit set. One scan of the few
/// names present is cheaper than a hashed lookup per name,
/// most of which are usually absent.
fn present(h: &HeaderMap, names: &[HeaderName]) -> u8 {
    let mut bits = 0u8;
    for k in h.keys() {
        if let Some(i) = names.iter().position(|n| n == k) {
            bits |= 1 << i;
        }
    }
    bits
}

fn remove_present(h: &mut HeaderMap, names: &[HeaderName], bits: u8) {
    for (i, name) in names.iter().enumerate() {
        if bits & (1 << i) != 0 {
            h.remove(name);
        }
    }
}

fn strip_hop_by_hop(h: &mut HeaderMap) {
    let bits = present(h, &HOP_BY_HOP);
    if bits != 0 {
        remove_present(h, &HOP_BY_HOP, bits);
    }
}

/// Removes the request headers of [`REQUEST_STRIPPED`].
fn strip_request(h: &mut HeaderMap) {
    const TE_BIT: u8 = 1 << 6; // `te`, last of REQUEST_STRIPPED
    let mut bits = present(h, &REQUEST_STRIPPED);
    if bits & TE_BIT != 0 && h.get(header::TE).is_some_and(|v| v == "trailers") {
        bits &= !TE_BIT;
    }
    if bits != 0 {
        remove_present(h, &REQUEST_STRIPPED, bits);
    }
}

const ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");

/// Set on the 503 of a request a circuit breaker refused, as Envoy's router does.
const OVERLOADED: HeaderName = HeaderName::from_static("x-envoy-overloaded");

/// What the route lookup decided, detached from the route table.
struct Decision {
    cluster: Option<Arc<crate::upstream::Cluster>>,
    rewrite: Option<(String, HeaderValue)>,
    timeout: Option<std::time::Duration>,
}

fn decide(table: &RouteTable, parts: &Parts) -> Option<Decision> {
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let route = table.route(host, parts.uri.path(), pq)?;
    let rewrite = route.rewrite(pq).and_then(|new| {
        let original = HeaderValue::from_str(pq).ok()?;
        Some((new, original))
    });
    Some(Decision {
        cluster: route.cluster.get(),
        rewrite,
        timeout: route.timeout,
    })
}

/// Handles one request; never fails (errors become Envoy's local replies).
pub async fn handle(ctx: &HttpCtx, req: Request<Incoming>) -> Response<ProxyBody> {
    let stats = &ctx.stats;
    stats.downstream_rq_total.inc();
    if req.version() == Version::HTTP_2 {
        stats.downstream_rq_http2_total.inc();
    } else {
        stats.downstream_rq_http1_total.inc();
    }
    let active = GaugeGuard::new(ctx.stats.clone(), |s: &HttpStats| &s.downstream_rq_active);
    let resp = route_and_forward(ctx, req, active).await;
    stats.count_status(resp.status().as_u16());
    resp
}

async fn route_and_forward(
    ctx: &HttpCtx,
    req: Request<Incoming>,
    active: GaugeGuard<HttpStats>,
) -> Response<ProxyBody> {
    let (mut parts, body) = req.into_parts();
    let decision = match &ctx.routes {
        Routes::Inline(t) => decide(t, &parts),
        Routes::Rds(slot) => {
            let guard = slot.load();
            guard.as_deref().and_then(|t| decide(t, &parts))
        }
    };
    let Some(d) = decision else {
        ctx.stats.no_route.inc();
        return local_reply(StatusCode::NOT_FOUND, "", active);
    };
    let Some(cluster) = d.cluster else {
        ctx.stats.no_cluster.inc();
        return local_reply(StatusCode::SERVICE_UNAVAILABLE, "", active);
    };
    let Some(host) = cluster.pick() else {
        return local_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "no healthy upstream",
            active,
        );
    };

    // The upstream request: origin-form URI, HTTP/1.1, Host kept (h2 :authority becomes Host).
    if let Some(a) = parts.uri.authority() {
        if !parts.headers.contains_key(header::HOST) {
            if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                parts.headers.insert(header::HOST, v);
            }
        }
    }
    if let Some((new, original)) = d.rewrite {
        match Uri::try_from(new) {
            Ok(u) => parts.uri = u,
            Err(_) => return local_reply(StatusCode::BAD_REQUEST, "", active),
        }
        parts.headers.insert(ORIGINAL_PATH, original);
    } else if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let pq = parts.uri.path_and_query().cloned();
        let mut up = hyper::http::uri::Parts::default();
        up.path_and_query = pq;
        if let Ok(u) = Uri::from_parts(up) {
            parts.uri = u;
        }
    }
    parts.version = Version::HTTP_11;
    strip_request(&mut parts.headers);
    let req = Request::from_parts(parts, body);

    let mut deadline = d.timeout.map(|t| Box::pin(tokio::time::sleep(t)));
    let result = match deadline.as_mut() {
        Some(sleep) => tokio::select! {
            // The exchange first: no per-poll random branch order, and a
            // response that is ready wins over a timer that fired with it.
            biased;
            r = pool::send(&cluster, &host, req) => Some(r),
            _ = sleep.as_mut() => None,
        },
        None => Some(pool::send(&cluster, &host, req).await),
    };
    match result {
        None => {
            cluster.stats().upstream_rq_timeout.inc();
            cluster.stats().count_status(504);
            host.stats.rq_error.inc();
            local_reply(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream request timeout",
                active,
            )
        }
        Some(Err(e)) => {
            cluster.stats().count_status(503);
            let overflow = matches!(e, UpstreamError::Overflow);
            if !overflow {
                host.stats.rq_error.inc();
            }
            tracing::debug!(cluster = cluster.name(), host = %host.addr(), error = %e, "upstream request failed");
            let mut r = local_reply(StatusCode::SERVICE_UNAVAILABLE, &e.to_string(), active);
            if overflow {
                r.headers_mut()
                    .insert(OVERLOADED, HeaderValue::from_static("true"));
            }
            r
        }
        Some(Ok(Exchange {
            response,
            sender,
            rq,
        })) => {
            let status = response.status().as_u16();
            cluster.stats().count_status(status);
            if status >= 500 {
                rq.host().stats.rq_error.inc();
            } else {
                rq.host().stats.rq_success.inc();
            }
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            let body = ProxyBody {
                kind: Kind::Upstream {
                    body: UpstreamBody::new(body, sender, rq),
                    deadline,
                },
                _active: active,
            };
            Response::from_parts(parts, body)
        }
    }
}

fn local_reply(
    status: StatusCode,
    body: &str,
    active: GaugeGuard<HttpStats>,
) -> Response<ProxyBody> {
    let data = if body.is_empty() {
        None
    } else {
        Some(Bytes::copy_from_slice(body.as_bytes()))
    };
    let has_body = data.is_some();
    let mut r = Response::new(ProxyBody {
        kind: Kind::Local(data),
        _active: active,
    });
    *r.status_mut() = status;
    if has_body {
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    r
}

/// Why a response body failed mid-stream.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The upstream connection broke.
    #[error("upstream: {0}")]
    Upstream(#[from] hyper::Error),
    /// The route timeout expired while the body was streaming.
    #[error("upstream request timeout")]
    Timeout,
}

/// A downstream response body: a local reply, or an upstream body under the
/// rest of the route timeout. Holds `downstream_rq_active` until dropped.
#[derive(Debug)]
pub struct ProxyBody {
    kind: Kind,
    _active: GaugeGuard<HttpStats>,
}

#[derive(Debug)]
enum Kind {
    Local(Option<Bytes>),
    Upstream {
        body: UpstreamBody,
        deadline: Option<Pin<Box<Sleep>>>,
    },
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.kind {
            Kind::Local(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Upstream { body, deadline } => {
                if let Some(sleep) = deadline {
                    if sleep.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Some(Err(BodyError::Timeout)));
                    }
                }
                let r = Pin::new(body).poll_frame(cx);
                if let Poll::Ready(None) = r {
                    *deadline = None;
                }
                r.map_err(BodyError::Upstream)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Local(d) => d.is_none(),
            Kind::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Local(d) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Upstream { body, .. } => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll_once(s: &mut Signals<'_>) -> Poll<Signal> {
        let mut cx = Context::from_waker(Waker::noop());
        s.poll_signal(&mut cx)
    }

    #[test]
    fn signals_report_drain_once_then_close() {
        let (drain, close) = (CancellationToken::new(), CancellationToken::new());
        let mut s = Signals::new(&drain, &close, true);
        assert!(poll_once(&mut s).is_pending());
        assert!(poll_once(&mut s).is_pending());
        drain.cancel();
        assert_eq!(poll_once(&mut s), Poll::Ready(Signal::Drain));
        assert!(poll_once(&mut s).is_pending());
        close.cancel();
        assert_eq!(poll_once(&mut s), Poll::Ready(Signal::Close));
    }

    #[test]
    fn signals_ignore_drain_when_not_armed() {
        let (drain, close) = (CancellationToken::new(), CancellationToken::new());
        drain.cancel();
        let mut s = Signals::new(&drain, &close, false);
        assert!(poll_once(&mut s).is_pending());
        close.cancel();
        assert_eq!(poll_once(&mut s), Poll::Ready(Signal::Close));
    }

    #[test]
    fn request_headers_stripped() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("a"));
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::EXPECT, HeaderValue::from_static("100-continue"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_request(&mut h);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["host", "te"]);
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        strip_request(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["host"]);
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
    }
}
