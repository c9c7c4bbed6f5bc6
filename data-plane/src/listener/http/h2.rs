//! HTTP/2 downstream connections (h2c with prior knowledge), through hyper's
//! HTTP/2 server.
//!
//! Owns: serving a connection whose first bytes were the HTTP/2 preface
//! (they are handed to hyper first), its idle timer (a connection without
//! an active stream is closed with a GOAWAY after `idle_timeout`, and given
//! `IDLE_DRAIN_TIME` to finish), drain (GOAWAY) and close, and each
//! stream: its headers converted to the `(name, value)` slices the router
//! reads, its body as a [`BodySource`], and the upstream answer as a
//! response body ([`H2Body`]) that reads the upstream connection from the
//! stream's own task. HTTP/2 has no header timer: frames (pings, settings)
//! arrive on idle connections; each stream's headers are bounded by the
//! header list size and count.
//!
//! Does not own routing (`router`) or attempts (`exchange`).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::http1::{self, Framing};
use crate::stats::GaugeGuard;
use crate::upstream::replay::{BodyError, BodySource, Chunk, Replay};

use super::exchange::{
    exchange, poll_piece, Activity, Answered, Exchange, Expired, LazySleep, Outcome, Piece, Timers,
};
use super::headers::{self, BadRequest};
use super::router;
use super::{HttpCtx, HttpStats, LocalReply, Signal, Signals};

/// How long a connection closed for being idle may take to finish its
/// goodbye (GOAWAY) before it is closed anyway; Envoy's default
/// `drain_timeout`.
const IDLE_DRAIN_TIME: Duration = Duration::from_secs(5);

/// When nothing is due, the idle timer still wakes this often.
const FAR: Duration = Duration::from_secs(86_400);

/// Requests in flight on one connection, and since when it has had none.
#[derive(Debug)]
struct ConnState {
    base: Instant,
    active: AtomicU32,
    /// Milliseconds since `base`.
    idle_since: AtomicU64,
}

impl ConnState {
    fn request_started(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    fn request_ended(&self) {
        if self.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.idle_since.store(ms, Ordering::Relaxed);
        }
    }

    /// When the connection may be closed for being idle, if it has no request.
    fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        if self.active.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let since = self.base + Duration::from_millis(self.idle_since.load(Ordering::Relaxed));
        Some(since + idle)
    }
}

/// The socket, with the bytes already read from it in front.
struct Prefixed {
    prefix: Bytes,
    stream: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let head = self.prefix.split_to(n);
            buf.put_slice(&head);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
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

/// What woke the connection's loop.
enum Event {
    Ended,
    Signal(Signal),
    Idle,
}

/// Serves an HTTP/2 connection whose first bytes (`prefix`) were read.
pub(super) async fn serve(
    stream: TcpStream,
    prefix: BytesMut,
    ctx: &Arc<HttpCtx>,
    signals: &mut Signals<'_>,
) {
    let state = Arc::new(ConnState {
        base: Instant::now(),
        active: AtomicU32::new(0),
        idle_since: AtomicU64::new(0),
    });
    let io = Prefixed {
        prefix: prefix.freeze(),
        stream,
    };
    let (svc_ctx, svc_state) = (ctx.clone(), state.clone());
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (ctx, state) = (svc_ctx.clone(), svc_state.clone());
        async move { Ok::<_, Infallible>(handle(ctx, state, req).await) }
    });
    let conn = ctx.h2.serve_connection(TokioIo::new(io), svc);
    let mut conn = std::pin::pin!(conn);
    let idle = ctx.limits.idle_timeout;
    let mut timer = idle.map(|t| LazySleep::new(Instant::now() + t));
    let mut goodbye: Option<Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        let event = std::future::poll_fn(|cx| {
            if conn.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Ended);
            }
            if let (Some(t), Some(idle)) = (&mut timer, idle) {
                while t.poll_fire(cx).is_ready() {
                    let now = Instant::now();
                    match state.idle_deadline(idle) {
                        Some(at) if at <= now => return Poll::Ready(Event::Idle),
                        Some(at) => t.set(at),
                        None => t.set(now + idle.min(FAR)),
                    }
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
            Event::Ended | Event::Signal(Signal::Close) => return,
            Event::Signal(Signal::Drain) => conn.as_mut().graceful_shutdown(),
            Event::Idle => {
                ctx.stats.downstream_cx_idle_timeout.inc();
                timer = None;
                conn.as_mut().graceful_shutdown();
                goodbye = Some(Box::pin(tokio::time::sleep(IDLE_DRAIN_TIME)));
            }
        }
    }
}

/// What a request holds until its response body is dropped: its share of
/// `downstream_rq_active` and of the connection's active requests.
#[derive(Debug)]
struct Held {
    active: GaugeGuard<HttpStats>,
    conn: Arc<ConnState>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.conn.request_ended();
    }
}

/// An HTTP/2 stream's request body.
#[derive(Debug)]
struct H2Source(Incoming);

impl BodySource for H2Source {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Chunk, BodyError>>> {
        let frame = match std::task::ready!(Pin::new(&mut self.0).poll_frame(cx)) {
            None => return Poll::Ready(None),
            Some(Err(e)) => return Poll::Ready(Some(Err(BodyError(Box::new(e))))),
            Some(Ok(f)) => f,
        };
        Poll::Ready(Some(Ok(match frame.into_data() {
            Ok(d) => Chunk::Data(d),
            Err(frame) => {
                let mut lines = Vec::new();
                if let Some(t) = frame.trailers_ref() {
                    for (k, v) in t {
                        http1::header_line(&mut lines, k.as_str().as_bytes(), v.as_bytes());
                    }
                }
                Chunk::Trailers(Bytes::from(lines))
            }
        })))
    }

    fn poll_gone(&mut self, _cx: &mut Context<'_>) -> Poll<()> {
        // hyper drops the stream's task when the client resets it.
        Poll::Pending
    }
}

/// Handles one stream; never fails (errors become Envoy's local replies).
async fn handle(
    ctx: Arc<HttpCtx>,
    conn: Arc<ConnState>,
    req: Request<Incoming>,
) -> Response<H2Body> {
    let stats = &ctx.stats;
    stats.downstream_rq_total.inc();
    stats.downstream_rq_http2_total.inc();
    conn.request_started();
    let held = Held {
        active: GaugeGuard::new(ctx.stats.clone(), |s: &HttpStats| &s.downstream_rq_active),
        conn,
    };
    let resp = route_and_forward(&ctx, req, held).await;
    stats.count_status(resp.status().as_u16());
    resp
}

async fn route_and_forward(ctx: &HttpCtx, req: Request<Incoming>, held: Held) -> Response<H2Body> {
    let (parts, incoming) = req.into_parts();
    if parts.headers.len() > ctx.limits.max_headers_count as usize {
        // The HTTP/2 codec has no count limit of its own.
        return local(LocalReply::new(431, ""), held);
    }
    let slices = headers::slices(&parts.headers);
    let info = match headers::scan_request(&slices) {
        Ok(i) => i,
        Err(e) => {
            if matches!(e, BadRequest::Protected | BadRequest::TooManyTokens) {
                ctx.stats.downstream_cx_protocol_error.inc();
            }
            return local(LocalReply::new(400, ""), held);
        }
    };
    let ended = incoming.is_end_stream();
    let framing = match info.content_length {
        _ if ended => Framing::Empty,
        Some(n) => Framing::Length(n),
        None => Framing::Chunked,
    };
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let request = router::Request {
        method: parts.method.as_str(),
        target,
        authority: parts.uri.authority().map(|a| a.as_str()),
        headers: &slices,
    };
    let mut head = Vec::with_capacity(256);
    let fwd = match router::prepare(ctx, &request, &info, framing, &mut head) {
        Ok(f) => f,
        Err(reply) => return local(reply, held),
    };
    drop(slices);
    let source = H2Source(incoming);
    let mut body = match fwd.retry {
        Some(_) => Replay::keeping(source, ended, fwd.retry_buffer_limit),
        None => Replay::once(source, ended),
    };
    let now = Instant::now();
    let idle = ctx.limits.stream_idle_timeout;
    let mut timers = Timers::start(LazySleep::new(now + FAR), now, fwd.timeout, idle);
    let mut act = Activity::new(now, idle.is_some(), ended);
    let outcome = {
        let mut x = Exchange {
            ctx,
            fwd: &fwd,
            head: &head,
            framing,
            body: &mut body,
            timers: &mut timers,
            act: &mut act,
        };
        exchange(&mut x, |h, _| {
            let reframed = matches!(h.framing, Framing::Chunked | Framing::Close);
            headers::response_header_map(h.headers, reframed)
        })
        .await
    };
    match outcome {
        Outcome::Local(reply) => local(reply, held),
        // The stream's body failed: nothing was sent.
        Outcome::Abandoned => local(LocalReply::new(400, ""), held),
        Outcome::Answered(mut ans) => {
            let map = std::mem::take(&mut ans.built);
            let status = StatusCode::from_u16(ans.status).unwrap_or(StatusCode::BAD_GATEWAY);
            let mut resp = Response::new(H2Body {
                kind: Kind::Upstream(Box::new(Streaming {
                    ans: Some(ans),
                    head,
                    body,
                    timers,
                    act,
                })),
                held,
            });
            *resp.status_mut() = status;
            *resp.headers_mut() = map;
            resp
        }
    }
}

/// Raw trailer lines as a header map (invalid lines left out).
fn trailer_map(raw: &[u8]) -> Option<HeaderMap> {
    let mut block = Vec::with_capacity(raw.len() + 2);
    block.extend_from_slice(raw);
    block.extend_from_slice(b"\r\n");
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let httparse::Status::Complete((_, parsed)) =
        httparse::parse_headers(&block, &mut slots).ok()?
    else {
        return None;
    };
    let mut map = HeaderMap::new();
    for h in parsed {
        if let (Ok(k), Ok(v)) = (
            header::HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) {
            map.append(k, v);
        }
    }
    Some(map)
}

fn local(reply: LocalReply, held: Held) -> Response<H2Body> {
    let has_body = !reply.body.is_empty();
    let data = has_body.then(|| Bytes::copy_from_slice(reply.body.as_bytes()));
    let mut r = Response::new(H2Body {
        kind: Kind::Local(data),
        held,
    });
    *r.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::BAD_GATEWAY);
    if has_body {
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    if reply.overloaded {
        r.headers_mut()
            .insert("x-envoy-overloaded", HeaderValue::from_static("true"));
    }
    r
}

/// Why a response body failed mid-stream.
#[derive(Debug, thiserror::Error)]
pub enum BodyFailure {
    /// The upstream connection broke, or the request could not be sent.
    #[error("upstream: {0}")]
    Upstream(String),
    /// The route timeout expired while the body was streaming.
    #[error("upstream request timeout")]
    Timeout,
    /// Nothing moved for `stream_idle_timeout`.
    #[error("stream timeout")]
    StreamIdle,
}

/// An upstream answer streaming to an HTTP/2 client.
#[derive(Debug)]
struct Streaming {
    ans: Option<Answered<HeaderMap>>,
    head: Vec<u8>,
    body: Replay<H2Source>,
    timers: Timers,
    act: Activity,
}

#[derive(Debug)]
enum Kind {
    Local(Option<Bytes>),
    Upstream(Box<Streaming>),
}

/// A downstream response body: a local reply, or an upstream body under the
/// rest of the route and stream idle timeouts. Holds `downstream_rq_active`
/// and the request's place in its connection until dropped.
#[derive(Debug)]
pub struct H2Body {
    kind: Kind,
    held: Held,
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = BodyFailure;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyFailure>>> {
        let this = &mut *self;
        let s = match &mut this.kind {
            Kind::Local(data) => return Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Upstream(s) => s,
        };
        let Some(ans) = &mut s.ans else {
            return Poll::Ready(None);
        };
        if ans
            .poll_sending(cx, &s.head, &mut s.body, &mut s.act)
            .is_err()
        {
            s.ans = None;
            return Poll::Ready(Some(Err(BodyFailure::Upstream(
                "the request body could not be read".into(),
            ))));
        }
        match poll_piece(&mut ans.conn, &mut ans.decoder, cx) {
            Poll::Ready(Ok(Piece::Data(n))) => {
                let data = ans.conn.buf.split_to(n).freeze();
                ans.decoder.consumed(n);
                s.act.touch();
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            Poll::Ready(Ok(Piece::End(trailers))) => {
                if let Some(a) = s.ans.take() {
                    a.finish();
                }
                let frame = trailers.and_then(|t| trailer_map(&t)).map(Frame::trailers);
                return Poll::Ready(frame.map(Ok));
            }
            Poll::Ready(Err(e)) => {
                s.ans = None;
                return Poll::Ready(Some(Err(BodyFailure::Upstream(e.to_string()))));
            }
            Poll::Pending => {}
        }
        match s.timers.poll_expired(cx, &s.act) {
            // (No per-try timeout runs once the response started.)
            Poll::Ready(Expired::Route | Expired::PerTry) => {
                s.ans = None;
                Poll::Ready(Some(Err(BodyFailure::Timeout)))
            }
            Poll::Ready(Expired::Idle(_)) => {
                s.ans = None;
                this.held.active.owner().downstream_rq_idle_timeout.inc();
                Poll::Ready(Some(Err(BodyFailure::StreamIdle)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Local(d) => d.is_none(),
            Kind::Upstream(s) => s.ans.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Local(d) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Upstream(_) => SizeHint::default(),
        }
    }
}
