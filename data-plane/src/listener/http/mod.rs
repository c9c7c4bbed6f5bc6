//! HTTP connection manager and router (`envoy.filters.network.http_connection_manager`
//! with `envoy.filters.http.router`).
//!
//! Owns serving one downstream connection and each of its requests:
//! - [`h1`]: HTTP/1.1, parsed and written by this crate (httparse for
//!   heads): keep-alive, pipelining, request bodies, the header and idle
//!   timers, the size and count limits, `100 Continue`, drain;
//! - [`h2`]: HTTP/2 with prior knowledge (h2c), through hyper's server: a
//!   connection whose first bytes are the HTTP/2 preface is handed to it;
//! - [`router`]: where a request goes (path normalisation, route lookup in
//!   the current route table, rewrite) and the upstream request head;
//! - [`exchange`]: the attempts (pick a host, take a pooled connection or
//!   open one within the circuit breakers, send, read the answer's head),
//!   retries under the route's policy with the body replayed
//!   (`upstream::replay`), outlier detection reports, the route, per-try and
//!   stream idle timeouts;
//! - [`headers`]: which headers cross the proxy;
//! - Envoy's local replies (404 no route, 503 no cluster / no healthy
//!   upstream / connect failure / overflow, 504 timeout, 408 and 431 for
//!   misbehaving clients) and the `http.<stat_prefix>.` stats.
//!
//! A request runs entirely in its connection's task (HTTP/2: its stream's
//! task): the upstream HTTP/1.1 client (`upstream::client`) has no task of
//! its own and no channel, and upstream connections come from per-worker
//! idle pools (`upstream::pool`). Headers are copied once, from the bytes
//! read to the bytes written, each way; HTTP/2 clients go through header
//! maps (hyper's), converted at the edge.
//!
//! Limits on what a client can make the proxy hold, with Envoy's meaning
//! (defaults in `model::HttpLimits`):
//! - the header read timeout (`request_headers_timeout`, or
//!   [`DEFAULT_REQUEST_HEADERS_TIMEOUT`] when unset): from the first byte of a
//!   request's head to its end; expired, the client gets a 408 and the
//!   connection closes. HTTP/2 connections have no header timer: their idle
//!   time is bounded by `idle_timeout` and each stream's headers by the
//!   header list size;
//! - the connection idle timeout (`common_http_protocol_options.idle_timeout`):
//!   a connection without an active request is closed (HTTP/2: GOAWAY);
//! - the stream idle timeout (`stream_idle_timeout`): a request with no bytes
//!   moving either way gets a 408 (request not fully received) or 504, or is
//!   reset once its response has started;
//! - head size (`max_request_headers_kb`: the request line and headers of
//!   HTTP/1.1, the header list of HTTP/2) and header count
//!   (`max_headers_count`): 431.
//!
//! The route table is read on every request (from the RDS slot, or the inline
//! table), so an RDS update applies to the next request of an existing
//! connection. Draining: a draining listener asks each connection to finish
//! (HTTP/1.1: close after the current response, at once if idle; HTTP/2: GOAWAY).
//!
//! Does not own upstream connections (see `upstream::pool`) or routing tables
//! (see `listener::route`).

pub mod exchange;
pub mod h1;
pub mod h2;
pub mod headers;
pub mod router;

use std::borrow::Cow;
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, SystemTime};

use futures::task::AtomicWaker;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::http1;
use crate::listener::route::{RouteSlot, RouteTable};
use crate::model::{HttpLimits, HttpManager};
use crate::stats::{stats_struct, Counter, Gauge, GaugeGuard};

/// The header read timeout when `request_headers_timeout` is not set. Envoy
/// leaves it disabled then; pylon-proxy always bounds how long a client may
/// take to send its headers, so slowly trickled headers cannot hold
/// connections and buffers.
pub const DEFAULT_REQUEST_HEADERS_TIMEOUT: Duration = Duration::from_secs(10);

stats_struct! {
    /// Envoy's `http.<stat_prefix>.` stats.
    pub struct HttpStats {
        downstream_cx_total: Counter => "downstream_cx_total",
        downstream_cx_active: Gauge => "downstream_cx_active",
        downstream_cx_idle_timeout: Counter => "downstream_cx_idle_timeout",
        downstream_cx_protocol_error: Counter => "downstream_cx_protocol_error",
        downstream_rq_total: Counter => "downstream_rq_total",
        downstream_rq_active: Gauge => "downstream_rq_active",
        downstream_rq_http1_total: Counter => "downstream_rq_http1_total",
        downstream_rq_http2_total: Counter => "downstream_rq_http2_total",
        downstream_rq_1xx: Counter => "downstream_rq_1xx",
        downstream_rq_2xx: Counter => "downstream_rq_2xx",
        downstream_rq_3xx: Counter => "downstream_rq_3xx",
        downstream_rq_4xx: Counter => "downstream_rq_4xx",
        downstream_rq_5xx: Counter => "downstream_rq_5xx",
        downstream_rq_header_timeout: Counter => "downstream_rq_header_timeout",
        downstream_rq_idle_timeout: Counter => "downstream_rq_idle_timeout",
        downstream_rq_failed_path_normalization: Counter => "downstream_rq_failed_path_normalization",
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

    /// A request the codec answered itself before it could be read (a 431
    /// for a head too large, a 400 it cannot parse, Envoy's 408 for a header
    /// timeout): counted as a request and a response, as Envoy does.
    fn count_codec_reply(&self) {
        self.downstream_rq_total.inc();
        self.downstream_rq_http1_total.inc();
        self.downstream_rq_4xx.inc();
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
    h2: hyper::server::conn::http2::Builder<TokioExecutor>,
    limits: HttpLimits,
    /// Largest HTTP/1.1 request head, request line included.
    head_limit: usize,
    header_timeout: Duration,
    normalize_path: bool,
    merge_slashes: bool,
}

impl HttpCtx {
    /// A context for a listener with these stats, routes and settings.
    pub fn new(stats: Arc<HttpStats>, routes: Routes, cfg: &HttpManager) -> HttpCtx {
        let limits = cfg.limits;
        let head_limit = limits.max_request_headers_kb as usize * 1024;
        let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        h2.max_header_list_size(u32::try_from(head_limit).unwrap_or(u32::MAX));
        HttpCtx {
            stats,
            routes,
            h2,
            limits,
            head_limit,
            header_timeout: limits
                .request_headers_timeout
                .unwrap_or(DEFAULT_REQUEST_HEADERS_TIMEOUT),
            normalize_path: cfg.normalize_path,
            merge_slashes: cfg.merge_slashes,
        }
    }
}

/// Envoy's local reply: a status, a short text body, and whether a circuit
/// breaker refused the request (`x-envoy-overloaded: true`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    /// The status.
    pub status: u16,
    /// The body (`text/plain`), possibly empty.
    pub body: Cow<'static, str>,
    /// Set `x-envoy-overloaded: true`.
    pub overloaded: bool,
}

impl LocalReply {
    /// A reply with this status and body.
    pub fn new(status: u16, body: impl Into<Cow<'static, str>>) -> LocalReply {
        LocalReply {
            status,
            body: body.into(),
            overloaded: false,
        }
    }
}

thread_local! {
    /// The `date` header value of the current second, per thread.
    static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// Appends a `date` header for now (formatted once a second per thread).
fn push_date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            d.1 = httpdate::fmt_http_date(now);
            d.0 = secs;
        }
        http1::header_line(out, b"date", d.1.as_bytes());
    });
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
    // A connection taken from the backlog of a listener that is already
    // draining is served (until `close`) rather than shut before its request.
    let late = drain.is_cancelled();
    let mut signals = Signals::new(&drain, &close, !late);
    if let h1::End::H2(stream, prefix) = h1::serve(stream, &ctx, &mut signals).await {
        h2::serve(stream, prefix, &ctx, &mut signals).await;
    }
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
    fn date_is_an_http_date() {
        let mut out = Vec::new();
        push_date(&mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("date: ") && s.ends_with(" GMT\r\n"), "{s}");
    }
}
