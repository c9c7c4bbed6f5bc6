//! HTTP connection manager and router (`envoy.filters.network.http_connection_manager`
//! with `envoy.filters.http.router`).
//!
//! Owns: serving one downstream connection (HTTP/1.1 with keep-alive, or h2c,
//! through hyper's auto server), the per-request path (path normalisation,
//! route lookup in the current route table, host pick, path rewrite, upstream
//! exchange under the route timeout), Envoy's local replies (404 no route, 503
//! no cluster / no healthy upstream / connect failure / overflow, 504 timeout,
//! 408 and 431 for misbehaving clients) and the `http.<stat_prefix>.` stats.
//!
//! With a retry policy, the request is attempted until an answer the policy
//! does not retry (`listener::retry` decides; each attempt has the per-try
//! timeout, all of them the route timeout), its body kept for the next
//! attempt up to the route's buffer limit (`upstream::replay`); a retry asks
//! the load balancer again, which round robin answers with the next host,
//! as in Envoy (`previous_hosts` insists on a host not tried). Every
//! attempt's outcome is reported to the cluster's outlier detection as
//! Envoy's router reports it.
//!
//! Limits on what a client can make the proxy hold, with Envoy's meaning
//! (defaults in `model::HttpLimits`):
//! - the header read timeout (`request_headers_timeout`, or
//!   [`DEFAULT_REQUEST_HEADERS_TIMEOUT`] when unset): from the first byte of a
//!   request's headers to their end; expired, the client gets a 408 and the
//!   connection closes. It is kept here, in [`ConnState`], rather than by
//!   hyper, whose own header timer also runs while a kept-alive connection
//!   waits for its next request, which would make every idle HTTP/1
//!   connection close at the header timeout instead of at `idle_timeout`.
//!   HTTP/2 connections (h2c with prior knowledge) have no header timer:
//!   their idle time is bounded by `idle_timeout` and each stream's headers
//!   by the header list size;
//! - the connection idle timeout (`common_http_protocol_options.idle_timeout`):
//!   a connection without an active request is closed (HTTP/2: GOAWAY);
//! - the stream idle timeout (`stream_idle_timeout`): a request with no bytes
//!   moving either way gets a 408 (request not fully received) or 504, or is
//!   reset once its response has started;
//! - header size (`max_request_headers_kb`, hyper's read buffer for HTTP/1,
//!   the HTTP/2 header list size) and count (`max_headers_count`): 431.
//!
//! Hop-by-hop headers are not forwarded either way, the ones a `Connection`
//! header names included (with Envoy's rules for requests: see
//! `strip_request`).
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
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll, Wake, Waker};
use std::time::Duration;

use futures::task::AtomicWaker;

use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::listener::path;
use crate::listener::retry::{self, would_retry, Failure, RetryState};
use crate::listener::route::{RouteSlot, RouteTable};
use crate::model::{HttpLimits, HttpManager, RetryPolicy};
use crate::stats::{stats_struct, Counter, Gauge, GaugeGuard};
use crate::upstream::outlier::Report;
use crate::upstream::pool::{self, Activity, Exchange, RequestBody, UpstreamBody, UpstreamError};
use crate::upstream::replay::Replay;
use crate::upstream::{Cluster, Host};

/// The header read timeout when `request_headers_timeout` is not set. Envoy
/// leaves it disabled then; pylon-proxy always bounds how long a client may
/// take to send its headers, so slowly trickled headers cannot hold
/// connections and buffers.
pub const DEFAULT_REQUEST_HEADERS_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection closed for being idle may take to finish its
/// goodbye (HTTP/2 GOAWAY) before it is closed anyway; Envoy's default
/// `drain_timeout`.
const IDLE_DRAIN_TIME: Duration = Duration::from_secs(5);

/// hyper's smallest HTTP/1 read buffer; a smaller header limit still lets
/// headers up to this size through.
const MIN_HEADER_BUFFER: usize = 8192;

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

    /// A request the codec answered itself (a 4xx such as 431, or Envoy's 408
    /// for a header timeout): counted as a request and a response, as Envoy does.
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
    server: auto::Builder<TokioExecutor>,
    limits: HttpLimits,
    header_timeout: Duration,
    normalize_path: bool,
    merge_slashes: bool,
}

impl HttpCtx {
    /// A context for a listener with these stats, routes and settings.
    pub fn new(stats: Arc<HttpStats>, routes: Routes, cfg: &HttpManager) -> HttpCtx {
        let limits = cfg.limits;
        let header_bytes = limits.max_request_headers_kb as usize * 1024;
        let mut server = auto::Builder::new(TokioExecutor::new());
        // One flattened `write(2)` per response instead of `writev(2)`: the
        // kernel's iovec import costs more than copying a small body into the
        // head buffer, which is the common case for a proxy.
        server
            .http1()
            .keep_alive(true)
            .writev(false)
            // Our own header timer runs instead (see the module docs).
            .header_read_timeout(None)
            // A request head must fit in the read buffer: beyond it hyper
            // answers 431 and closes, so this is the header size limit.
            .max_buf_size(header_bytes.max(MIN_HEADER_BUFFER));
        if limits.max_headers_count != 100 {
            // hyper's default is also 100, kept on the stack; any other
            // value moves the header array to the heap.
            server
                .http1()
                .max_headers(limits.max_headers_count as usize);
        }
        server
            .http2()
            .max_header_list_size(u32::try_from(header_bytes).unwrap_or(u32::MAX));
        HttpCtx {
            stats,
            routes,
            server,
            limits,
            header_timeout: limits
                .request_headers_timeout
                .unwrap_or(DEFAULT_REQUEST_HEADERS_TIMEOUT),
            normalize_path: cfg.normalize_path,
            merge_slashes: cfg.merge_slashes,
        }
    }
}

/// `ConnState` time stamps are milliseconds since its `base`; this one means unset.
const UNSET: u64 = u64::MAX;

/// The state of one downstream connection that its serve loop, its socket
/// wrapper (`Downstream`) and its requests share: enough to tell an idle
/// connection from one whose client is sending (or trickling) headers.
#[derive(Debug)]
pub struct ConnState {
    base: Instant,
    /// Requests whose response has not ended.
    active: AtomicU32,
    /// When `active` last dropped to 0 (the connection's start at first).
    idle_since: AtomicU64,
    /// When the first byte of the next request's headers was read.
    head_started: AtomicU64,
    /// Bytes were read while a request was active (HTTP/1 pipelining).
    read_during_request: AtomicBool,
    /// The client spoke HTTP/2 with prior knowledge: HTTP/2 frames (pings,
    /// settings) arrive on idle connections, so no header timer here.
    h2: AtomicBool,
    /// Answer 408 and close on the next read: the header timeout expired.
    reply_timeout: AtomicBool,
}

impl ConnState {
    fn new() -> ConnState {
        ConnState {
            base: Instant::now(),
            active: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(UNSET),
            read_during_request: AtomicBool::new(false),
            h2: AtomicBool::new(false),
            reply_timeout: AtomicBool::new(false),
        }
    }

    #[inline]
    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(UNSET - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.base + Duration::from_millis(ms)
    }

    /// A request's headers arrived (hyper called the service).
    fn request_started(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(UNSET, Ordering::Relaxed);
        self.read_during_request.store(false, Ordering::Relaxed);
    }

    /// A request's response ended (or was abandoned).
    fn request_ended(&self, had_body: bool) {
        if self.active.fetch_sub(1, Ordering::Relaxed) != 1 {
            return;
        }
        let now = self.now_ms();
        self.idle_since.store(now, Ordering::Relaxed);
        // Bytes read during a request without a body can only be the next
        // request (pipelined): its header time has started. (With a body
        // they may be the body; then the next request's first new byte starts it.)
        if !had_body && self.read_during_request.swap(false, Ordering::Relaxed) {
            self.head_started.store(now, Ordering::Relaxed);
        }
    }

    /// Bytes were read from the client.
    #[inline]
    fn on_read(&self) {
        if self.active.load(Ordering::Relaxed) > 0 {
            self.read_during_request.store(true, Ordering::Relaxed);
        } else if self.head_started.load(Ordering::Relaxed) == UNSET {
            self.head_started.store(self.now_ms(), Ordering::Relaxed);
        }
    }
}

/// Envoy's local reply to a request whose headers did not arrive in time.
const HEADER_TIMEOUT_REPLY: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 22\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nrequest header timeout";

/// The downstream socket as hyper sees it: every read updates the
/// connection's [`ConnState`], and once the header timeout has expired the
/// next read writes the 408 and reports end of stream, which ends hyper's
/// connection.
struct Downstream {
    stream: TcpStream,
    state: Arc<ConnState>,
    sniffed: bool,
}

/// The start of the HTTP/2 connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

impl AsyncRead for Downstream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.state.reply_timeout.load(Ordering::Relaxed) {
            // Best effort: the reply is small enough for the socket buffer.
            let _ = this.stream.try_write(HEADER_TIMEOUT_REPLY);
            let _ = socket2::SockRef::from(&this.stream).shutdown(std::net::Shutdown::Write);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.stream).poll_read(cx, buf))?;
        let got = &buf.filled()[before..];
        if !got.is_empty() {
            if !this.sniffed {
                this.sniffed = true;
                let n = got.len().min(H2_PREFACE.len());
                if got[..n] == H2_PREFACE[..n] {
                    this.state.h2.store(true, Ordering::Relaxed);
                }
            }
            if !this.state.h2.load(Ordering::Relaxed) {
                this.state.on_read();
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Downstream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Which connection timeout expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnTimeout {
    /// The headers of a request did not arrive in time.
    Header,
    /// No request for `idle_timeout`.
    Idle,
}

/// The connection's header and idle timers on one tokio timer. The timer is
/// never later than the deadline the state asks for: it is moved earlier when
/// a deadline appears that is earlier than the one armed, and otherwise
/// re-armed only when it fires (a keep-alive connection serving requests
/// back to back touches the timer about once per header timeout, not per
/// request).
struct ConnTimer {
    sleep: Pin<Box<Sleep>>,
    armed: Instant,
    header_timeout: Duration,
    idle_timeout: Option<Duration>,
    /// How long to wait before looking again when nothing is due.
    recheck: Duration,
}

impl ConnTimer {
    fn new(ctx: &HttpCtx) -> ConnTimer {
        let recheck = ctx
            .limits
            .idle_timeout
            .unwrap_or(Duration::from_secs(3600))
            .max(ctx.header_timeout);
        let armed = Instant::now() + recheck;
        ConnTimer {
            sleep: Box::pin(tokio::time::sleep_until(armed)),
            armed,
            header_timeout: ctx.header_timeout,
            idle_timeout: ctx.limits.idle_timeout,
            recheck,
        }
    }

    /// The deadline the connection's state asks for.
    fn due(&self, st: &ConnState) -> Option<(Instant, ConnTimeout)> {
        if st.active.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let head = st.head_started.load(Ordering::Relaxed);
        if head != UNSET && !st.h2.load(Ordering::Relaxed) {
            return Some((st.at(head) + self.header_timeout, ConnTimeout::Header));
        }
        let idle = self.idle_timeout?;
        Some((
            st.at(st.idle_since.load(Ordering::Relaxed)) + idle,
            ConnTimeout::Idle,
        ))
    }

    fn arm(&mut self, at: Instant) {
        self.armed = at;
        self.sleep.as_mut().reset(at);
    }

    fn poll(&mut self, cx: &mut Context<'_>, st: &ConnState) -> Poll<ConnTimeout> {
        if let Some((at, _)) = self.due(st) {
            if at < self.armed {
                self.arm(at);
            }
        }
        loop {
            ready!(self.sleep.as_mut().poll(cx));
            let now = Instant::now();
            match self.due(st) {
                Some((at, what)) if at <= now => return Poll::Ready(what),
                Some((at, _)) => self.arm(at),
                None => self.arm(now + self.recheck),
            }
        }
    }
}

/// What woke a connection's serve loop.
enum Event {
    /// hyper's connection ended, with its error if any.
    Ended(Option<Box<dyn std::error::Error + Send + Sync>>),
    Signal(Signal),
    Timeout(ConnTimeout),
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
    let state = Arc::new(ConnState::new());
    let io = Downstream {
        stream,
        state: state.clone(),
        sniffed: false,
    };
    let (svc_ctx, svc_state) = (ctx.clone(), state.clone());
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (ctx, state) = (svc_ctx.clone(), svc_state.clone());
        async move { Ok::<_, Infallible>(handle(&ctx, state, req).await) }
    });
    let conn = ctx.server.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    // A connection taken from the backlog of a listener that is already
    // draining is served (until `close`) rather than shut before its request.
    let late = drain.is_cancelled();
    let mut signals = Signals::new(&drain, &close, !late);
    let mut timer = Some(ConnTimer::new(&ctx));
    let mut goodbye: Option<Pin<Box<Sleep>>> = None;
    loop {
        let event = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                return Poll::Ready(Event::Ended(r.err()));
            }
            if let Some(t) = &mut timer {
                if let Poll::Ready(what) = t.poll(cx, &state) {
                    return Poll::Ready(Event::Timeout(what));
                }
            }
            if let Some(g) = &mut goodbye {
                if g.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Signal(Signal::Close));
                }
            }
            signals.poll_signal(cx).map(Event::Signal)
        })
        .await;
        match event {
            Event::Ended(err) => {
                if let Some(e) = err {
                    count_conn_error(&ctx.stats, e.as_ref());
                }
                return;
            }
            Event::Signal(Signal::Close) => return,
            Event::Signal(Signal::Drain) => conn.as_mut().graceful_shutdown(),
            Event::Timeout(ConnTimeout::Header) => {
                ctx.stats.downstream_rq_header_timeout.inc();
                ctx.stats.count_codec_reply();
                // The next read writes the 408 and ends hyper's connection;
                // whether or not this poll gets there, the connection closes.
                state.reply_timeout.store(true, Ordering::Relaxed);
                std::future::poll_fn(|cx| {
                    let _ = conn.as_mut().poll(cx);
                    Poll::Ready(())
                })
                .await;
                return;
            }
            Event::Timeout(ConnTimeout::Idle) => {
                ctx.stats.downstream_cx_idle_timeout.inc();
                timer = None;
                conn.as_mut().graceful_shutdown();
                goodbye = Some(Box::pin(tokio::time::sleep(IDLE_DRAIN_TIME)));
            }
        }
    }
}

/// Counts what the codec answered on its own before a connection ended: a
/// request it could not parse (hyper replies 431 when the head is too large
/// or has too many headers, 400 otherwise).
fn count_conn_error(stats: &HttpStats, e: &(dyn std::error::Error + 'static)) {
    if let Some(e) = e.downcast_ref::<hyper::Error>() {
        if e.is_parse() || e.is_parse_too_large() {
            stats.downstream_cx_protocol_error.inc();
            stats.count_codec_reply();
        }
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

/// Headers that describe one connection and are not forwarded.
const HOP_BY_HOP: [HeaderName; 5] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Request headers not forwarded upstream: the hop-by-hop ones, `expect`, and
/// `te` (last; kept as `te: trailers` when it holds `trailers`).
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

/// Bit of `connection` in [`HOP_BY_HOP`] and [`REQUEST_STRIPPED`] (first in both).
const CONNECTION_BIT: u8 = 1;

/// Connection tokens that name no header (`close`, `keep-alive` and
/// `upgrade` are connection options; `http2-settings` belongs to h2c upgrades).
fn is_connection_option(token: &str) -> bool {
    ["close", "keep-alive", "upgrade", "http2-settings"]
        .iter()
        .any(|o| token.eq_ignore_ascii_case(o))
}

/// Why a request's `Connection` header is refused (Envoy answers these 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BadConnection {
    /// Ten or more tokens.
    TooManyTokens,
    /// It names `x-forwarded-for`, `-host`, `-proto` or a pseudo-header:
    /// dropping those would hide where the request came from.
    Protected,
}

/// Most tokens a request's `Connection` header may carry (Envoy's limit).
const MAX_CONNECTION_TOKENS: usize = 10;

/// Removes the headers `Connection` names (RFC 9110 7.6.1), besides the
/// fixed hop-by-hop ones. For a request (`request`), Envoy's rules apply:
/// too many tokens or a protected name refuse the request, `host` and `te`
/// are left to the caller (`te` is kept only as `te: trailers`).
fn strip_nominated(h: &mut HeaderMap, request: bool) -> Result<(), BadConnection> {
    let mut names: Vec<HeaderName> = Vec::new();
    let mut tokens = 0;
    for value in h.get_all(header::CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            tokens += 1;
            if is_connection_option(token) {
                continue;
            }
            if request {
                let protected = token.starts_with(':')
                    || ["x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"]
                        .iter()
                        .any(|p| token.eq_ignore_ascii_case(p));
                if protected {
                    return Err(BadConnection::Protected);
                }
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                names.push(name);
            }
        }
    }
    if request && tokens >= MAX_CONNECTION_TOKENS {
        return Err(BadConnection::TooManyTokens);
    }
    for name in names {
        // The request's Host stays (Envoy keeps it as :authority, out of the
        // nominated headers' reach); `te` is sanitised with the fixed list.
        if request && (name == header::HOST || name == header::TE) {
            continue;
        }
        h.remove(name);
    }
    Ok(())
}

/// Removes the response headers of [`HOP_BY_HOP`] and those `Connection` names.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let bits = present(h, &HOP_BY_HOP);
    if bits & CONNECTION_BIT != 0 {
        // A response's Connection header is the upstream's word: its
        // nominated headers go, whatever they are.
        let _ = strip_nominated(h, false);
    }
    if bits != 0 {
        remove_present(h, &HOP_BY_HOP, bits);
    }
}

/// Removes the request headers of [`REQUEST_STRIPPED`] and those
/// `Connection` names; keeps `te` only as `te: trailers`, as Envoy does.
fn strip_request(h: &mut HeaderMap) -> Result<(), BadConnection> {
    const TE_BIT: u8 = 1 << 6; // `te`, last of REQUEST_STRIPPED
    let mut bits = present(h, &REQUEST_STRIPPED);
    if bits & CONNECTION_BIT != 0 {
        strip_nominated(h, true)?;
    }
    if bits & TE_BIT != 0 {
        let trailers = h.get_all(header::TE).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
        });
        if trailers {
            h.insert(header::TE, HeaderValue::from_static("trailers"));
            bits &= !TE_BIT;
        }
    }
    if bits != 0 {
        remove_present(h, &REQUEST_STRIPPED, bits);
    }
    Ok(())
}

const ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");

/// Set on the 503 of a request a circuit breaker refused, as Envoy's router does.
const OVERLOADED: HeaderName = HeaderName::from_static("x-envoy-overloaded");

/// What the route lookup decided, detached from the route table.
struct Decision {
    cluster: Option<Arc<Cluster>>,
    rewrite: Option<(String, HeaderValue)>,
    timeout: Option<Duration>,
    retry: Option<Arc<RetryPolicy>>,
    retry_buffer_limit: usize,
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
        retry: route.retry.clone(),
        retry_buffer_limit: route.retry_buffer_limit,
    })
}

/// What a request holds until its response body is dropped: its share of
/// `downstream_rq_active` and of the connection's active requests.
#[derive(Debug)]
struct Held {
    active: GaugeGuard<HttpStats>,
    conn: Arc<ConnState>,
    had_body: bool,
}

impl Held {
    fn stats(&self) -> &HttpStats {
        self.active.owner()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.conn.request_ended(self.had_body);
    }
}

/// Handles one request; never fails (errors become Envoy's local replies).
pub async fn handle(
    ctx: &HttpCtx,
    conn: Arc<ConnState>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let stats = &ctx.stats;
    stats.downstream_rq_total.inc();
    if req.version() == Version::HTTP_2 {
        stats.downstream_rq_http2_total.inc();
    } else {
        stats.downstream_rq_http1_total.inc();
    }
    conn.request_started();
    let held = Held {
        active: GaugeGuard::new(ctx.stats.clone(), |s: &HttpStats| &s.downstream_rq_active),
        conn,
        had_body: !req.body().is_end_stream(),
    };
    let resp = route_and_forward(ctx, req, held).await;
    stats.count_status(resp.status().as_u16());
    resp
}

async fn route_and_forward(
    ctx: &HttpCtx,
    req: Request<Incoming>,
    held: Held,
) -> Response<ProxyBody> {
    let (mut parts, body) = req.into_parts();
    if parts.version == Version::HTTP_2
        && parts.headers.len() > ctx.limits.max_headers_count as usize
    {
        // hyper enforces the count for HTTP/1 (431 before the request
        // reaches us); the HTTP/2 codec has no such limit.
        return local_reply(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "", held);
    }
    if let Err(e) = strip_request(&mut parts.headers) {
        tracing::debug!(error = ?e, "request refused: invalid Connection header");
        ctx.stats.downstream_cx_protocol_error.inc();
        // A protocol error ends the connection, as in Envoy's codec.
        let mut r = local_reply(StatusCode::BAD_REQUEST, "", held);
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return r;
    }
    if (ctx.normalize_path || ctx.merge_slashes)
        && normalize_uri(&mut parts.uri, ctx.normalize_path, ctx.merge_slashes).is_err()
    {
        ctx.stats.downstream_rq_failed_path_normalization.inc();
        return local_reply(StatusCode::BAD_REQUEST, "", held);
    }
    let decision = match &ctx.routes {
        Routes::Inline(t) => decide(t, &parts),
        Routes::Rds(slot) => {
            let guard = slot.load();
            guard.as_deref().and_then(|t| decide(t, &parts))
        }
    };
    let Some(d) = decision else {
        ctx.stats.no_route.inc();
        return local_reply(StatusCode::NOT_FOUND, "", held);
    };
    let Some(cluster) = d.cluster else {
        ctx.stats.no_cluster.inc();
        return local_reply(StatusCode::SERVICE_UNAVAILABLE, "", held);
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
            Err(_) => return local_reply(StatusCode::BAD_REQUEST, "", held),
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
    let activity = Activity::new(body.is_end_stream());
    match d.retry {
        None => forward_once(ctx, &cluster, parts, body, d.timeout, activity, held).await,
        Some(policy) => {
            let replay = Replay::new(body, d.retry_buffer_limit);
            let state = RetryState::new(policy);
            forward_with_retries(
                ctx, &cluster, parts, replay, state, d.timeout, activity, held,
            )
            .await
        }
    }
}

/// How one attempt ended.
enum Attempt {
    /// Response headers arrived.
    Answered(Exchange),
    /// The exchange failed before response headers.
    Failed(UpstreamError),
    /// A timer expired before response headers.
    Expired(Expired),
}

/// Sends `req` to `host` under the request's timers; reports the outcome to
/// the cluster's outlier detection.
async fn attempt(
    cluster: &Cluster,
    host: &Arc<Host>,
    req: Request<RequestBody>,
    timers: Option<&mut Timers>,
) -> Attempt {
    let outcome = match timers {
        Some(t) => tokio::select! {
            // The exchange first: no per-poll random branch order, and a
            // response that is ready wins over a timer that fired with it.
            biased;
            r = pool::send(cluster, host, req) => match r {
                Ok(x) => Attempt::Answered(x),
                Err(e) => Attempt::Failed(e),
            },
            expired = t.expired() => Attempt::Expired(expired),
        },
        None => match pool::send(cluster, host, req).await {
            Ok(x) => Attempt::Answered(x),
            Err(e) => Attempt::Failed(e),
        },
    };
    // As Envoy's router reports them: a connection is a success at the
    // connection level and the status says the rest; a failure or reset
    // before the response is a connect failure; a timeout is a timeout. A
    // request a circuit breaker refused says nothing about the host.
    match &outcome {
        Attempt::Answered(x) => {
            cluster.report(host, Report::ConnectSuccess);
            cluster.report(host, Report::Status(x.response.status().as_u16()));
        }
        Attempt::Failed(UpstreamError::Overflow) => {}
        Attempt::Failed(_) => cluster.report(host, Report::ConnectFailed),
        Attempt::Expired(Expired::Route | Expired::PerTry) => cluster.report(host, Report::Timeout),
        Attempt::Expired(Expired::Idle(_)) => {}
    }
    outcome
}

/// One attempt, no retry policy.
async fn forward_once(
    ctx: &HttpCtx,
    cluster: &Cluster,
    parts: Parts,
    body: Incoming,
    timeout: Option<Duration>,
    activity: Arc<Activity>,
    held: Held,
) -> Response<ProxyBody> {
    let Some(host) = cluster.pick() else {
        return local_reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream", held);
    };
    let req = Request::from_parts(parts, RequestBody::new(body, activity.clone()));
    let mut timers = Timers::new(timeout, ctx.limits.stream_idle_timeout, activity);
    let outcome = attempt(cluster, &host, req, timers.as_mut()).await;
    respond(ctx, cluster, &host, outcome, timers, held)
}

/// Attempts until one gives an answer the route's retry policy does not
/// retry, the retries are spent, or the route timeout expires (see
/// `listener::retry`).
#[allow(clippy::too_many_arguments)]
async fn forward_with_retries(
    ctx: &HttpCtx,
    cluster: &Arc<Cluster>,
    parts: Parts,
    replay: Arc<Replay>,
    mut state: RetryState,
    timeout: Option<Duration>,
    activity: Arc<Activity>,
    held: Held,
) -> Response<ProxyBody> {
    let (per_try, previous_hosts, repicks) = {
        let p = state.policy();
        (
            p.per_try_timeout,
            p.previous_hosts,
            p.host_selection_retry_max_attempts as usize,
        )
    };
    let mut timers = Timers::create(timeout, ctx.limits.stream_idle_timeout, activity.clone());
    let mut tried: Vec<std::net::SocketAddr> = Vec::new();
    loop {
        // Envoy's default: the load balancer's next pick, which round robin
        // moves past the host just tried; `previous_hosts` insists.
        let host = if previous_hosts && !tried.is_empty() {
            cluster.pick_avoiding(&tried, repicks)
        } else {
            cluster.pick()
        };
        let Some(host) = host else {
            return local_reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream", held);
        };
        tried.push(host.addr());
        let mut req = Request::new(RequestBody::replay(replay.reader(), activity.clone()));
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = parts.uri.clone();
        *req.version_mut() = parts.version;
        *req.headers_mut() = parts.headers.clone();
        timers.start_try(per_try);
        let outcome = attempt(cluster, &host, req, Some(&mut timers)).await;
        let failure = match &outcome {
            Attempt::Answered(x) => {
                let status = x.response.status().as_u16();
                (status >= 500 || state.policy().retriable_status_codes.contains(&status)).then(
                    || Failure::Response {
                        status,
                        overloaded: x.response.headers().contains_key(OVERLOADED),
                    },
                )
            }
            Attempt::Failed(UpstreamError::Overflow) => Some(Failure::Overflow),
            Attempt::Failed(UpstreamError::Connect(_) | UpstreamError::ConnectTimeout) => {
                Some(Failure::ConnectFailure)
            }
            Attempt::Failed(UpstreamError::Reset(_)) => Some(Failure::Reset),
            Attempt::Expired(Expired::PerTry) => Some(Failure::PerTryTimeout),
            // The route timeout ends every attempt, the stream idle timeout too.
            Attempt::Expired(Expired::Route | Expired::Idle(_)) => None,
        };
        let mut would = failure.is_some_and(|f| would_retry(state.policy(), f));
        if would && !replay.replayable() {
            // The body outgrew what is kept for retries.
            cluster.stats().retry_or_shadow_abandoned.inc();
            would = false;
        }
        match state.decide(cluster, would) {
            retry::Decision::Retry(back_off) => {
                if let Attempt::Expired(Expired::PerTry) = outcome {
                    cluster.stats().upstream_rq_per_try_timeout.inc();
                }
                host.stats.rq_error.inc();
                drop(outcome);
                tracing::debug!(cluster = cluster.name(), host = %host.addr(), ?failure, ?back_off, "retrying request");
                timers.end_try();
                // The route timeout runs on during the back-off.
                tokio::select! {
                    biased;
                    // No attempt is under way: nothing to tell outlier detection.
                    expired = timers.expired() => {
                        return respond(ctx, cluster, &host, Attempt::Expired(expired), Some(timers), held);
                    }
                    _ = tokio::time::sleep(back_off) => {}
                }
            }
            _ => {
                timers.end_try();
                return respond(ctx, cluster, &host, outcome, Some(timers), held);
            }
        }
    }
}

/// The downstream response for an attempt's outcome: the upstream response,
/// or Envoy's local reply for the failure.
fn respond(
    ctx: &HttpCtx,
    cluster: &Cluster,
    host: &Arc<Host>,
    outcome: Attempt,
    timers: Option<Timers>,
    held: Held,
) -> Response<ProxyBody> {
    match outcome {
        Attempt::Expired(Expired::Route) => {
            cluster.stats().upstream_rq_timeout.inc();
            cluster.stats().count_status(504);
            host.stats.rq_error.inc();
            local_reply(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream request timeout",
                held,
            )
        }
        Attempt::Expired(Expired::PerTry) => {
            cluster.stats().upstream_rq_per_try_timeout.inc();
            cluster.stats().count_status(504);
            host.stats.rq_error.inc();
            local_reply(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream request timeout",
                held,
            )
        }
        Attempt::Expired(Expired::Idle(request_done)) => {
            ctx.stats.downstream_rq_idle_timeout.inc();
            host.stats.rq_error.inc();
            // Envoy's choice: 504 once the request was received in full, 408 while
            // the client is still sending it.
            let status = if request_done {
                StatusCode::GATEWAY_TIMEOUT
            } else {
                StatusCode::REQUEST_TIMEOUT
            };
            local_reply(status, "stream timeout", held)
        }
        Attempt::Failed(e) => {
            cluster.stats().count_status(503);
            let overflow = matches!(e, UpstreamError::Overflow);
            if !overflow {
                host.stats.rq_error.inc();
            }
            tracing::debug!(cluster = cluster.name(), host = %host.addr(), error = %e, "upstream request failed");
            let mut r = local_reply(StatusCode::SERVICE_UNAVAILABLE, &e.to_string(), held);
            if overflow {
                r.headers_mut()
                    .insert(OVERLOADED, HeaderValue::from_static("true"));
            }
            r
        }
        Attempt::Answered(Exchange {
            response,
            sender,
            rq,
        }) => {
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
                    timers,
                },
                held,
            };
            Response::from_parts(parts, body)
        }
    }
}

fn local_reply(status: StatusCode, body: &str, held: Held) -> Response<ProxyBody> {
    let data = if body.is_empty() {
        None
    } else {
        Some(Bytes::copy_from_slice(body.as_bytes()))
    };
    let has_body = data.is_some();
    let mut r = Response::new(ProxyBody {
        kind: Kind::Local(data),
        held,
    });
    *r.status_mut() = status;
    if has_body {
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    r
}

/// Applies `normalize_path` / `merge_slashes` to the request's URI: routing
/// and the upstream request both see the result.
fn normalize_uri(uri: &mut Uri, rfc: bool, merge: bool) -> Result<(), path::InvalidPath> {
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    let std::borrow::Cow::Owned(normal) = path::normalize(pq, rfc, merge)? else {
        return Ok(());
    };
    let mut parts = std::mem::take(uri).into_parts();
    // Normalisation only yields characters a path may hold.
    parts.path_and_query = Some(normal.try_into().map_err(|_| path::InvalidPath)?);
    *uri = Uri::from_parts(parts).map_err(|_| path::InvalidPath)?;
    Ok(())
}

/// Which request timer expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    /// The route timeout.
    Route,
    /// The retry policy's per-try timeout.
    PerTry,
    /// The stream idle timeout; whether the request had been received in full.
    Idle(bool),
}

/// A request's route timeout, per-try timeout and stream idle timeout, on
/// one tokio timer. Activity does not move the timer: when it fires, the
/// idle deadline is worked out from the last activity and the timer re-armed
/// if it has not passed, so a busy stream costs a timer update per idle
/// timeout, not per chunk.
#[derive(Debug)]
struct Timers {
    sleep: Pin<Box<Sleep>>,
    route: Option<Instant>,
    per_try: Option<Instant>,
    idle: Option<Duration>,
    activity: Arc<Activity>,
}

impl Timers {
    /// `None` when both are disabled.
    fn new(
        route: Option<Duration>,
        idle: Option<Duration>,
        activity: Arc<Activity>,
    ) -> Option<Timers> {
        if route.is_none() && idle.is_none() {
            return None;
        }
        Some(Timers::create(route, idle, activity))
    }

    /// The timers, even when none is armed yet (retries may arm a per-try one).
    fn create(route: Option<Duration>, idle: Option<Duration>, activity: Arc<Activity>) -> Timers {
        let now = Instant::now();
        let route = route.map(|t| now + t);
        let mut t = Timers {
            sleep: Box::pin(tokio::time::sleep_until(now)),
            route,
            per_try: None,
            idle,
            activity,
        };
        t.rearm(now);
        t
    }

    /// The earliest deadline (`None`: nothing armed).
    fn next_deadline(&self) -> Option<Instant> {
        let idle_at = self.idle.map(|t| self.activity.last() + t);
        [self.route, self.per_try, idle_at]
            .into_iter()
            .flatten()
            .min()
    }

    fn rearm(&mut self, now: Instant) {
        // Nothing armed: a far-off wake-up that finds nothing due.
        let at = self
            .next_deadline()
            .unwrap_or(now + Duration::from_secs(86_400));
        self.sleep.as_mut().reset(at);
    }

    /// Starts the per-try timeout of an attempt (`None`: no such timeout).
    fn start_try(&mut self, per_try: Option<Duration>) {
        let now = Instant::now();
        self.per_try = per_try.map(|t| now + t);
        self.rearm(now);
    }

    /// The attempt is over: only the route and idle timeouts run on.
    fn end_try(&mut self) {
        self.per_try = None;
    }

    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<Expired> {
        loop {
            ready!(self.sleep.as_mut().poll(cx));
            let now = Instant::now();
            if self.route.is_some_and(|r| r <= now) {
                return Poll::Ready(Expired::Route);
            }
            if self.per_try.is_some_and(|r| r <= now) {
                return Poll::Ready(Expired::PerTry);
            }
            let idle_at = self.idle.map(|t| self.activity.last() + t);
            if idle_at.is_some_and(|i| i <= now) {
                return Poll::Ready(Expired::Idle(self.activity.request_done()));
            }
            match self.next_deadline() {
                Some(next) => self.sleep.as_mut().reset(next),
                None => return Poll::Pending,
            }
        }
    }

    fn expired(&mut self) -> impl Future<Output = Expired> + '_ {
        std::future::poll_fn(|cx| self.poll_expired(cx))
    }
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
    /// Nothing moved for `stream_idle_timeout`.
    #[error("stream timeout")]
    StreamIdle,
}

/// A downstream response body: a local reply, or an upstream body under the
/// rest of the route and stream idle timeouts. Holds `downstream_rq_active`
/// and the request's place in its connection until dropped.
#[derive(Debug)]
pub struct ProxyBody {
    kind: Kind,
    held: Held,
}

#[derive(Debug)]
enum Kind {
    Local(Option<Bytes>),
    Upstream {
        body: UpstreamBody,
        timers: Option<Timers>,
    },
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match &mut this.kind {
            Kind::Local(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Upstream { body, timers } => {
                if let Some(t) = timers {
                    match t.poll_expired(cx) {
                        // (No per-try timeout runs once the response started.)
                        Poll::Ready(Expired::Route | Expired::PerTry) => {
                            return Poll::Ready(Some(Err(BodyError::Timeout)))
                        }
                        Poll::Ready(Expired::Idle(_)) => {
                            this.held.stats().downstream_rq_idle_timeout.inc();
                            return Poll::Ready(Some(Err(BodyError::StreamIdle)));
                        }
                        Poll::Pending => {}
                    }
                }
                let r = Pin::new(&mut *body).poll_frame(cx);
                match &r {
                    Poll::Ready(None) => *timers = None,
                    Poll::Ready(Some(_)) => {
                        if let Some(t) = timers {
                            t.activity.touch();
                        }
                    }
                    Poll::Pending => {}
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

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<String> {
        let mut n: Vec<String> = h
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap()))
            .collect();
        n.sort_unstable();
        n
    }

    #[test]
    fn request_headers_stripped() {
        type Case = (
            &'static [(&'static str, &'static str)],
            Result<&'static [&'static str], BadConnection>,
        );
        let table: &[Case] = &[
            (
                &[
                    ("host", "a"),
                    ("connection", "keep-alive"),
                    ("keep-alive", "timeout=5"),
                    ("expect", "100-continue"),
                    ("te", "trailers"),
                ],
                Ok(&["host: a", "te: trailers"]),
            ),
            (&[("host", "a"), ("te", "gzip")], Ok(&["host: a"])),
            (&[("te", "gzip, Trailers")], Ok(&["te: trailers"])),
            // Nominated headers go; options and unknown names are ignored.
            (
                &[
                    ("connection", "x-hop, close"),
                    ("connection", "X-Other,,"),
                    ("x-hop", "1"),
                    ("x-other", "2"),
                    ("x-keep", "3"),
                    ("proxy-connection", "x"),
                ],
                Ok(&["x-keep: 3"]),
            ),
            // Host and te are never removed through Connection (te is sanitised).
            (
                &[
                    ("host", "a"),
                    ("connection", "host, te, upgrade, http2-settings"),
                    ("te", "trailers"),
                    ("upgrade", "h2c"),
                ],
                Ok(&["host: a", "te: trailers"]),
            ),
            (
                &[
                    ("connection", "x-forwarded-for"),
                    ("x-forwarded-for", "1.2.3.4"),
                ],
                Err(BadConnection::Protected),
            ),
            (
                &[("connection", "X-Forwarded-Proto")],
                Err(BadConnection::Protected),
            ),
            (&[("connection", ":path")], Err(BadConnection::Protected)),
            (
                &[("connection", "a,b,c,d,e,f,g,h,i,j")],
                Err(BadConnection::TooManyTokens),
            ),
            (
                &[("connection", "a,b,c,d,e,f,g,h,i"), ("a", "1"), ("j", "2")],
                Ok(&["j: 2"]),
            ),
        ];
        for (input, want) in table {
            let mut h = headers(input);
            let got = strip_request(&mut h).map(|()| names(&h));
            let want = want.map(|w| w.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            assert_eq!(got, want, "{input:?}");
        }
    }

    #[test]
    fn response_headers_stripped() {
        type Case = (
            &'static [(&'static str, &'static str)],
            &'static [&'static str],
        );
        let table: &[Case] = &[
            (
                &[
                    ("content-type", "text/plain"),
                    ("connection", "keep-alive, x-resp-hop"),
                    ("x-resp-hop", "1"),
                    ("x-resp-keep", "2"),
                    ("keep-alive", "timeout=5"),
                    ("transfer-encoding", "chunked"),
                    ("upgrade", "h2c"),
                ],
                &["content-type: text/plain", "x-resp-keep: 2"],
            ),
            // No Connection header: only the fixed list.
            (&[("x-a", "1"), ("proxy-connection", "close")], &["x-a: 1"]),
        ];
        for (input, want) in table {
            let mut h = headers(input);
            strip_hop_by_hop(&mut h);
            assert_eq!(names(&h), *want, "{input:?}");
        }
    }
}
